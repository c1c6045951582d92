"""Dispatch's benchmark: Dispatch measured side by side with real peers, in one run.

``python -m bench`` (or ``nox -s bench``) installs and starts the peers on loopback, runs each
figure of SPEC §13 as interleaved rounds (Dispatch, peer, Dispatch, peer, …), profiles Dispatch
while it works, and rewrites ``docs/benchmarks.md``. Nothing here is imported by the daemon
or the tests; numbers are measured here and never asserted anywhere.

Layout: ``procs`` and ``procstat`` own child processes and read ``/proc``; ``install`` gets
the peers onto the machine; ``peers/`` starts and stops each server; ``load``, ``latency``,
``idle`` and ``health_probe`` generate load; ``figures/`` runs one figure each; ``report``
writes the document.
"""
