"""Keep a peer MTA's DNS on loopback: a private mount namespace with its own resolv.conf.

This machine's system resolver must never be asked anything by the benchmark. The peers are
configured so that they have no name to look up (numeric relay hosts, explicit host names,
Postfix's client name lookup off); as a second line of defence they run in a mount namespace
where ``/etc/resolv.conf`` names only ``127.0.0.1``, where nothing answers, so a lookup that
slips through fails at once on loopback instead of leaving the machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.install import can_unshare

RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"


def loopback_resolver(directory: Path, argv: Sequence[str]) -> tuple[list[str], str]:
    """``argv`` wrapped to run with a loopback-only resolv.conf, and a note if that failed."""
    problem = can_unshare()
    if problem:
        return list(argv), f"not isolated from the system resolver ({problem})"
    resolv = directory / "resolv.conf"
    resolv.write_text(RESOLV_CONF)
    resolv.chmod(0o644)
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(resolv), *argv], ""
