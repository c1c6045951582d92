"""The servers under test, each started privately on a free loopback port.

Every peer is started by a function ``start(launcher, directory, mode, relay_port)`` that
returns a :class:`~bench.peers.base.Server` once the server accepts connections, and the
server is stopped by the :class:`~bench.procs.Launcher` that started it.
"""
