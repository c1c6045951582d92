"""Socket activation (``sd_listen_fds(3)``): listening sockets the service manager opened.

systemd hands a service the sockets of its socket units as file descriptors 3, 4, …
(``SD_LISTEN_FDS_START``) and describes them in the environment: ``LISTEN_PID`` (the process
they are meant for), ``LISTEN_FDS`` (how many) and ``LISTEN_FDNAMES`` (colon-separated names,
from ``FileDescriptorName=`` in the socket unit; by default the socket unit's name).

:func:`take_listen_fds` reads them once, in the main process before it starts any child,
marks the descriptors close-on-exec, and removes the variables from the environment (what
``sd_listen_fds(1)`` does), so that no child process takes the sockets for its own: the
intake worker processes get theirs passed explicitly. The descriptors stay open for the life
of the process; whoever serves on them works on duplicates (:meth:`InheritedSocket.duplicate`),
so a component restarted after a crash finds them again.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping
from typing import Final

import attrs

log = logging.getLogger("dispatch.systemd")

SD_LISTEN_FDS_START: Final = 3
LISTEN_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """The environment describes inherited sockets that cannot be used."""


@attrs.frozen
class InheritedSocket:
    """One descriptor passed by the service manager, and the name its socket unit gave it."""

    fd: int
    name: str

    def duplicate(self) -> socket.socket:
        """A new socket object on a duplicate of the descriptor (the caller closes it).
        Raises :class:`ActivationError` when the descriptor is not a socket."""
        duplicate = os.dup(self.fd)
        try:
            return socket.socket(fileno=duplicate)
        except OSError as exc:
            os.close(duplicate)
            raise ActivationError(f"{self}: not a socket ({exc.strerror or exc})") from exc

    def __str__(self) -> str:
        return f"fd {self.fd} ({self.name!r})"


def take_listen_fds(
    environ: MutableMapping[str, str] | None = None, *, pid: int | None = None
) -> tuple[InheritedSocket, ...]:
    """The sockets passed to this process (none when ``LISTEN_PID`` names another process or
    is unset), after removing the ``LISTEN_*`` variables from ``environ`` (``os.environ`` by
    default). Raises :class:`ActivationError` for values that do not make sense."""
    env = os.environ if environ is None else environ
    listen_pid, listen_fds, names = (env.pop(name, None) for name in LISTEN_VARIABLES)
    if not listen_fds:
        return ()
    own_pid = os.getpid() if pid is None else pid
    if listen_pid != str(own_pid):
        # What systemd's own sd_listen_fds does: the sockets were meant for the process that
        # exec'd us (or a wrapper did not pass its PID on); they are not ours to take.
        log.warning(
            "ignoring LISTEN_FDS=%s: LISTEN_PID=%s is not this process (%d); set LISTEN_PID "
            "in the process that execs Dispatch",
            listen_fds,
            listen_pid,
            own_pid,
        )
        return ()
    try:
        count = int(listen_fds)
    except ValueError:
        count = -1
    if count < 0:
        raise ActivationError(f"LISTEN_FDS={listen_fds} is not a number of file descriptors")
    given = names.split(":") if names else []
    if given and len(given) != count:
        raise ActivationError(
            f"LISTEN_FDNAMES={names} names {len(given)} descriptors but LISTEN_FDS={count}"
        )
    sockets = tuple(
        InheritedSocket(fd, given[i] if given else "unknown")
        for i, fd in enumerate(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
    )
    for inherited in sockets:
        try:
            os.set_inheritable(inherited.fd, False)
        except OSError as exc:
            raise ActivationError(f"{inherited}: not open ({exc.strerror or exc})") from exc
    return sockets
