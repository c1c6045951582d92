"""OpenSMTPD as a peer: ``smtpd -d -f CONFIG`` in the foreground, unpacked from its package.

The Debian binary has its queue (``/var/spool/smtpd``), chroot directory and control socket
compiled in, so one instance per machine: :func:`bench.install.ensure_opensmtpd` refuses if
another ``smtpd`` runs, an existing queue directory the benchmark did not make is never
touched, and the one it made is removed when the instance stops. Intake is durable as
OpenSMTPD does it (its ``fs`` queue backend fsyncs the message and the envelope before the
250).

Two settings differ from the defaults, and the report says so: ``smtp limit max-mails`` is
raised from 100 so that one connection may carry more than 100 messages (smtp-source ``-d``
and the latency generator's pooled connections), and in held mode the MTA side is paused
with ``smtpctl pause mta`` (smtpctl must be setgid ``opensmtpq``, as the package installs it).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from bench.install import OPENSMTPD_SPOOL, Tool, cache_dir
from bench.peers.base import SERVER_NAME, Peer, RelayMode, Server, StartFn
from bench.peers.isolation import loopback_resolver
from bench.procs import LOOPBACK, Launcher, StartError, free_port, run_quiet

MAX_MAILS_PER_SESSION = 1_000_000
SPOOL_MARKER = cache_dir() / "opensmtpd-spool-in-use"
"""Exists while the benchmark's OpenSMTPD owns the compiled-in queue directory."""


def _config(port: int, relay_port: int) -> str:
    return f"""\
smtp limit max-mails {MAX_MAILS_PER_SESSION}
listen on {LOOPBACK} port {port} hostname {SERVER_NAME}
action "out" relay host smtp://{LOOPBACK}:{relay_port}
match from any for any action "out"
"""


def _claim_spool() -> None:
    """Start from an empty queue: remove the last instance's, never a queue we did not make.

    The queue directory is compiled in, so every instance shares it; mail a held instance
    left there would otherwise be delivered by the next one and inflate its count.
    """
    if OPENSMTPD_SPOOL.exists():
        if not SPOOL_MARKER.exists():
            raise StartError(
                f"{OPENSMTPD_SPOOL} exists and was not made by the benchmark (a system "
                "OpenSMTPD's queue?); not touching it"
            )
        shutil.rmtree(OPENSMTPD_SPOOL)
    SPOOL_MARKER.parent.mkdir(parents=True, exist_ok=True)
    SPOOL_MARKER.touch()


def _release_spool() -> None:
    shutil.rmtree(OPENSMTPD_SPOOL, ignore_errors=True)
    SPOOL_MARKER.unlink(missing_ok=True)


def _smtpctl(smtpd: Path) -> Path:
    """The unpacked smtpctl, made setgid opensmtpq like the package's own."""
    smtpctl = smtpd.parent / "smtpctl"
    run_quiet(["chown", "root:opensmtpq", str(smtpctl)])
    smtpctl.chmod(0o2555)
    return smtpctl


def make_start(tool: Tool) -> StartFn:
    assert tool.path is not None
    smtpd: Path = tool.path

    def start(launcher: Launcher, directory: Path, mode: RelayMode, relay_port: int) -> Server:
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = directory / "smtpd.conf"
        config.write_text(_config(port, relay_port))
        config.chmod(0o644)
        checked = run_quiet([str(smtpd), "-n", "-f", str(config)])
        if checked.returncode != 0:
            raise StartError(f"smtpd -n: {checked.stderr.strip()}")
        _claim_spool()
        argv, note = loopback_resolver(directory, [str(smtpd), "-d", "-f", str(config)])
        child = launcher.start("opensmtpd", argv, cwd=directory, after_stop=_release_spool)
        child.wait_for_port(port, 30)
        server = Server(name="OpenSMTPD", port=port, child=child, session_id=child.pid)
        server.delivery_evidence = lambda: delivery_pacing(child.log_path)
        if note:
            server.extra["note"] = note
        if mode is RelayMode.HELD:
            _pause_mta(smtpd, server)
        return server

    return start


_MTA_CLOSED = re.compile(r"mta disconnected reason=\S+ messages=(\d+)")


def delivery_pacing(log: Path) -> str:
    """What OpenSMTPD's log says about its outgoing connections (for the end-to-end figure)."""
    text = log.read_text(errors="replace")
    connections = text.count(" mta connecting ")
    carried = [int(n) for n in _MTA_CLOSED.findall(text)]
    if not connections:
        return ""
    most = max(carried, default=0)
    return (
        f"OpenSMTPD's log: {connections} outgoing connections to the sink, each closed after "
        f"at most {most} messages (`mta disconnected reason=quit messages={most}`), "
        "with messages held meanwhile (`hiwat reached … holding envelopes`): its MTA paces "
        "connections to one relay by default, so its end-to-end figure is that pacing and "
        "not its capacity (it used a few % of a core)"
    )


def _pause_mta(smtpd: Path, server: Server) -> None:
    smtpctl = _smtpctl(smtpd)
    for _ in range(50):  # the control process may come up a moment after the listener
        paused = run_quiet([str(smtpctl), "pause", "mta"])
        if paused.returncode == 0:
            return
        time.sleep(0.1)
    raise StartError(f"smtpctl pause mta failed: {paused.stderr.strip() or paused.stdout}")


def opensmtpd_peer(tool: Tool) -> Peer:
    start = make_start(tool) if tool.available else _unavailable
    return Peer(
        name="OpenSMTPD",
        tool=tool,
        start=start,
        config_note="smtpd -d -f CONFIG; defaults but for smtp limit max-mails "
        f"{MAX_MAILS_PER_SESSION:,} (default 100 per connection); held mode: smtpctl pause mta",
    )


def _unavailable(launcher: Launcher, directory: Path, mode: RelayMode, port: int) -> Server:
    raise StartError("OpenSMTPD is not available")
