"""The service manager's notification protocol (``sd_notify(3)``), spoken with the stdlib.

systemd gives a ``Type=notify`` service the address of a Unix datagram socket in
``NOTIFY_SOCKET``: a file system path, or ``@name`` for a socket in the abstract namespace.
Each notification is one datagram of newline-separated ``KEY=VALUE`` lines. Dispatch sends:

- ``READY=1`` (with ``STATUS=``) once every component is ready, so after the SMTP ports are
  bound; ``systemctl start`` returns then, and units ordered after Dispatch start then;
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` when SIGHUP starts a reload of the configuration,
  and ``READY=1`` with the outcome in ``STATUS=`` when it is done (the unit shows
  "reloading" in between; under ``Type=notify-reload``, systemd 253 and later, ``systemctl
  reload`` sends the SIGHUP itself and waits for that ``READY=1``);
- ``STOPPING=1`` at the stop request;
- ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` (``WatchdogSec=``) from a task on the Trio loop:
  a loop stuck in a blocking call or a busy loop stops the pings, and systemd restarts the
  service.

Sending never blocks the loop and never stops the daemon: each datagram goes out through a
fresh non-blocking socket (as ``sd_notify`` itself does); a datagram the manager cannot take
at once is dropped; the first failure is logged as a warning and later ones at debug level.
Without ``NOTIFY_SOCKET`` every method does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping
from typing import Final, Literal

import trio

from dispatch.config.live import ReloadResult
from dispatch.logs import printable

log = logging.getLogger("dispatch.systemd")

# The variables systemd sets for the notify protocol; read once, then removed from the
# environment so that child processes (the intake workers) never talk to the manager in our
# name: with NotifyAccess=main it would ignore them anyway.
NOTIFY_VARIABLES: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

State = Literal["starting", "ready", "reloading", "stopping"]


def notify_address(value: str) -> str | bytes | None:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value, or ``None`` if it is not a Unix
    socket (``@name``: abstract namespace, a leading NUL byte; ``/path``: a file)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_seconds(usec: str | None, pid: str | None, own_pid: int) -> float | None:
    """The watchdog timeout in seconds, or ``None`` when the watchdog is off for this process
    (no ``WATCHDOG_USEC``; ``WATCHDOG_PID`` names another process). Raises ``ValueError``."""
    if not usec:
        return None
    if pid and int(pid) != own_pid:
        return None
    microseconds = int(usec)
    if microseconds <= 0:
        raise ValueError(f"WATCHDOG_USEC={usec} is not a positive number of microseconds")
    return microseconds / 1_000_000


def reload_status(result: ReloadResult) -> str:
    """The ``STATUS=`` line after a reload: what it did, in a few words."""
    if result.problems:
        return f"reload rejected ({len(result.problems)} problem(s), see the log): nothing changed"
    status = "configuration reloaded: " + (
        "live keys applied" if result.applied else "no live key changed"
    )
    if result.needs_restart:
        status += f"; a restart applies {', '.join(result.needs_restart)}"
    return status


class SystemdNotifier:
    """Sends notifications to the service manager; see the module docstring.

    Keeps the state the manager was last told (starting, ready, reloading, stopping) so
    that it never contradicts itself: a SIGHUP before ``READY=1`` or after ``STOPPING=1``
    sends nothing, and ``READY=1`` never follows ``STOPPING=1``.
    """

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog if address is not None else None
        self.state: State = "starting"
        self._failed = False

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None, *, pid: int | None = None
    ) -> SystemdNotifier:
        """The notifier the environment asks for (``os.environ`` by default), which loses
        ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``."""
        env = os.environ if environ is None else environ
        value, usec, watchdog_pid = (env.pop(name, None) for name in NOTIFY_VARIABLES)
        if not value:
            return cls(None)
        address = notify_address(value)
        if address is None:
            log.warning("NOTIFY_SOCKET=%s is not a Unix socket: no notifications", value)
            return cls(None)
        try:
            watchdog = watchdog_seconds(usec, watchdog_pid, os.getpid() if pid is None else pid)
        except ValueError as exc:
            log.warning("watchdog off: %s (WATCHDOG_PID=%s)", exc, watchdog_pid)
            watchdog = None
        if watchdog is None:
            log.info("notifying systemd at %s", value)
        else:
            log.info("notifying systemd at %s; watchdog ping every %.1f s", value, watchdog / 2)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one notification of ``KEY=VALUE`` lines; whether it went out. Never blocks,
        never raises."""
        if self.address is None:
            return False
        datagram = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(datagram, self.address)
        except OSError as exc:
            # Logged once: a manager that went away would otherwise fill the log every ping.
            level = logging.DEBUG if self._failed else logging.WARNING
            log.log(level, "cannot notify systemd (%s): %s", lines[0], exc)
            self._failed = True
            return False
        return True

    def status(self, text: str) -> None:
        """What ``systemctl status`` shows on its ``Status:`` line."""
        self.send(f"STATUS={printable(text)}")

    def ready(self, status: str) -> None:
        """Every component is ready (ignored once the stop was requested)."""
        if self.state in ("starting", "reloading"):
            self.state = "ready"
            self.send("READY=1", f"STATUS={printable(status)}")

    def reloading(self) -> None:
        """A configuration reload begins (only while ready)."""
        if self.state == "ready":
            self.state = "reloading"
            monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=reloading")

    def reloaded(self, status: str) -> None:
        """The reload is done, applied or not: ready again."""
        if self.state == "reloading":
            self.ready(status)

    def stopping(self, status: str) -> None:
        if self.state != "stopping":
            self.state = "stopping"
            self.send("STOPPING=1", f"STATUS={printable(status)}")

    def start_watchdog(self) -> None:
        """Start pinging the watchdog, if it is on, from a system task of the running Trio
        loop; the task ends when the loop does (``trio.run`` cancels it)."""
        if self.watchdog is not None:
            trio.lowlevel.spawn_system_task(self.feed_watchdog, self.watchdog / 2)

    async def feed_watchdog(self, interval: float) -> None:
        """Send ``WATCHDOG=1`` now and every ``interval`` seconds until cancelled.

        It runs on the Trio loop on purpose: the pings stop when the loop stops running
        tasks, which is what the watchdog is there to notice. :meth:`send` never raises, so
        cancellation is the only way out.
        """
        while True:
            self.send("WATCHDOG=1")
            await trio.sleep(interval)
