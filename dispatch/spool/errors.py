"""The errors the spool raises, and the one place OS errors are translated into them.

Every error the spool raises on purpose is a :class:`SpoolError`. Callers on the intake path
need only two branches: :class:`SpoolFullError` (the disk or quota is full: SMTP answers
``452 4.3.1``, the API answers 507) and any other :class:`SpoolError` (``451 4.3.0`` / 503).
The lifecycle errors (:class:`UnknownMessageError`, :class:`WrongStateError`,
:class:`MessageBusyError`) are caused by the caller — a stale id from the CLI, a race
between a worker and an operator — and carry a message that names the id and what to do.
"""

from __future__ import annotations

import errno
from pathlib import Path

# ENOSPC: no space left on the device. EDQUOT: the user's disk quota is exhausted. Both mean
# "try again later, after someone frees space", which SMTP spells 452 4.3.1 (RFC 3463).
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class SpoolError(Exception):
    """Base class of every error the spool raises on purpose."""


class SpoolWriteError(SpoolError):
    """A file operation on the spool failed for a reason other than a full disk."""


class SpoolFullError(SpoolWriteError):
    """The spool's file system (or the quota of its user) has no space left."""


class CorruptEnvelopeError(SpoolError, ValueError):
    """An envelope file could not be decoded: bad JSON, unknown version or a wrong field."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{message}")
        self.path = path


class UnknownMessageError(SpoolError, KeyError):
    """No message with this id is in the spool (it was delivered, deleted, or never existed)."""

    def __init__(self, message_id: str) -> None:
        super().__init__(message_id)
        self.message_id = message_id

    def __str__(self) -> str:
        return f"no message {self.message_id!r} in the spool (delivered, deleted or never there)"


class WrongStateError(SpoolError):
    """The message exists but is not in the state the operation needs."""

    def __init__(self, message_id: str, state: str, operation: str, needed: str) -> None:
        super().__init__(f"cannot {operation} message {message_id!r}: it is {state}, not {needed}")
        self.message_id = message_id
        self.state = state


class MessageBusyError(SpoolError):
    """Another operation on the same message is still in progress; try again shortly."""

    def __init__(self, message_id: str) -> None:
        super().__init__(
            f"message {message_id!r} is being changed by another operation; try again shortly"
        )
        self.message_id = message_id


def translate_os_error(exc: OSError, action: str) -> SpoolWriteError:
    """Return the spool error for an OS error raised while doing ``action``.

    ``action`` completes the sentence "the spool could not ...", e.g. ``"write message
    spl_01..."``. The original error is kept as ``__cause__`` by the caller's ``raise from``.
    """
    detail = exc.strerror or str(exc)
    if exc.errno in _FULL_ERRNOS:
        return SpoolFullError(f"spool is full, could not {action}: {detail}")
    return SpoolWriteError(f"could not {action}: {detail}")
