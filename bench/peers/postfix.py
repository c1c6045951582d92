"""Postfix as a peer: a private instance (its own config and queue directories).

``postfix -c DIR start-fg`` runs an instance that shares nothing with a system Postfix but
the binaries: ``main.cf`` and ``master.cf`` are written under DIR, with the queue in
``DIR/queue`` and the log in ``DIR/maillog``. It listens on one loopback port and relays
everything to ``relayhost = [127.0.0.1]:PORT``. Intake is durable as Postfix does it by
default: ``cleanup`` fsyncs the queue file before ``smtpd`` answers 250 (Postfix does not
fsync the queue directory). Services run unchrooted, so the instance needs no copy of /etc.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from bench.install import Tool
from bench.peers.base import SERVER_NAME, Peer, RelayMode, Server
from bench.peers.isolation import loopback_resolver
from bench.procs import LOOPBACK, Launcher, StartError, free_port, log_tail, run_quiet
from bench.procstat import session_of

MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _main_cf(directory: Path, mode: RelayMode, relay_port: int) -> str:
    # Held mode: nothing leaves the queue, so Postfix's inflow control (cleanup hands out a
    # token per message, qmgr gives them back) would make smtpd sleep up to in_flow_delay
    # (1 s) before each new message once they run out: half of the quick intake rounds
    # stalled at ~640 msgs/s with a core idle, the others ran at ~1200 (docs/intake-cpu.md,
    # round 7). Off, so that an intake figure measures intake, not the hold.
    held = ""
    if mode is RelayMode.HELD:
        held = "default_destination_rate_delay = 60s\nin_flow_delay = 0\n"
    return f"""\
compatibility_level = 3.6
queue_directory = {directory}/queue
data_directory = {directory}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {SERVER_NAME}
mydomain = example.test
myorigin = example.test
mydestination =
inet_interfaces = {LOOPBACK}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [{LOOPBACK}]:{relay_port}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file = {directory}/maillog
maillog_file_prefixes = {directory}
{held}"""


def start_postfix(launcher: Launcher, directory: Path, mode: RelayMode, relay_port: int) -> Server:
    """Write the instance, ``postfix check`` it (creates the queue) and start it."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # the postfix user walks into queue/ and data/
    port = free_port()
    (directory / "main.cf").write_text(_main_cf(directory, mode, relay_port))
    smtpd = f"{LOOPBACK}:{port}      inet  n       -       n       -       -       smtpd\n"
    (directory / "master.cf").write_text(smtpd + MASTER_SERVICES)
    (directory / "queue").mkdir(exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    run_quiet(["chown", "postfix", str(directory / "data")])
    checked = run_quiet(["postfix", "-c", str(directory), "check"])
    if checked.returncode != 0:  # Postfix tells its log, not stderr, when that is no terminal
        reason = checked.stderr.strip() or log_tail(directory / "maillog", 3)
        raise StartError(f"postfix check failed: {reason}")
    argv, note = loopback_resolver(directory, ["postfix", "-c", str(directory), "start-fg"])

    def stop() -> None:
        run_quiet(["postfix", "-c", str(directory), "stop"], timeout=30)
        _kill_master(directory)

    child = launcher.start("postfix", argv, cwd=directory, stop_command=stop)
    child.wait_for_port(port, 30)
    master_pid = int((directory / "queue" / "pid" / "master.pid").read_text().split()[0])
    session = session_of(master_pid) or master_pid
    server = Server(name="Postfix", port=port, child=child, session_id=session)
    if note:
        server.extra["note"] = note
    return server


def _kill_master(directory: Path) -> None:
    """If ``postfix stop`` left the master running (it detaches from our group), kill it."""
    try:
        pid = int((directory / "queue" / "pid" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if session_of(pid) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def postfix_peer(tool: Tool) -> Peer:
    return Peer(
        name="Postfix",
        tool=tool,
        start=start_postfix,
        config_note="private instance (postfix -c DIR start-fg), defaults but for: "
        "relayhost [127.0.0.1]:PORT, smtpd_peername_lookup = no, no chroot, "
        "held mode default_destination_rate_delay = 60s and in_flow_delay = 0",
    )
