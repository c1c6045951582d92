"""The idle connections of one smarthost relay, kept for reuse.

Theory of operation: :meth:`ConnectionPool.take` hands out the most recently used idle
connection (the likeliest to be alive), or opens a new one. A connection whose last
transaction ended with the reply to its data less than ``FRESH_SECONDS`` ago is handed out as
it is: a completed transaction leaves the server ready for the next MAIL (RFC 5321 §4.1.4).
Any other is sent RSET first (§4.1.1.5), which proves the server has not dropped it while
idle; one that fails is closed and the next idle connection, or a new one, is tried. The
:class:`Lease` says which happened, so that the relay knows whether a transaction that got no
reply at all may be run again on another connection. :meth:`ConnectionPool.give_back` keeps a
usable connection, with when it went idle and whether its transaction ended cleanly (the
bookkeeping is the pool's, not the session's). A connection idle for more than
``IDLE_SECONDS`` is closed (QUIT) at the next :meth:`take` instead of being reused; there is
no background task.

The pool does not bound how many connections exist: the relay opens one only for a delivery
holding one of its ``max_inflight`` tokens, so at most that many are ever open or idle.

Ownership and stopping: the pool owns its idle connections; a leased one belongs to the
delivery until it is given back. :meth:`ConnectionPool.aclose` QUITs the idle ones (each
bounded) and stops pooling: connections given back afterwards are closed at once.
"""

from __future__ import annotations

import logging
from typing import Final

import attrs
import trio

from dispatch.monitoring.traces import Trace
from dispatch.relays.smtp_options import SessionOptions
from dispatch.relays.smtp_session import SmtpClientSession

__all__ = ["FRESH_SECONDS", "IDLE_SECONDS", "ConnectionPool", "Lease"]

log = logging.getLogger("dispatch.relays.smarthost")

# A pooled connection idle for longer is closed rather than reused: well under the 5 minutes
# a server waits for the next command (RFC 5321 §4.5.3.2.7), so it is rarely already gone.
IDLE_SECONDS: Final = 60.0
FRESH_SECONDS: Final = 2.0
"""A pooled connection whose last transaction ended cleanly less than this long ago is reused
without an RSET round trip."""


@attrs.frozen
class Lease:
    """A connection handed out by :meth:`ConnectionPool.take`. ``checked`` is True for a new
    connection or one that just answered RSET; False for one reused as it was (fresh)."""

    session: SmtpClientSession
    checked: bool


@attrs.frozen
class _Idle:
    session: SmtpClientSession
    since: float  # trio.current_time() when it was given back
    ended_cleanly: bool  # its last transaction got as far as the reply to its data


class ConnectionPool:
    """Idle connections to one server, most recently used last (see the module docstring).

    ``connections`` counts connections opened, by "tls" or "plain", for monitoring.
    """

    def __init__(self, options: SessionOptions) -> None:
        self.options = options
        self.connections = {"tls": 0, "plain": 0}
        self._idle: list[_Idle] = []
        self._closed = False

    def __len__(self) -> int:
        """Idle connections now."""
        return len(self._idle)

    async def take(self, *, check: bool = False, trace: Trace | None = None) -> Lease:
        """An idle connection, else a new one; `SessionError` if opening one fails.

        With ``check``, even a fresh connection must answer RSET first. Cancellation drops a
        connection whose RSET was under way. ``trace`` becomes the leased session's trace
        (its RSET or its whole opening dialogue included) until :meth:`give_back`.
        """
        await self._close_expired()
        now = trio.current_time()
        while self._idle:
            idle = self._idle.pop()  # the most recently used: the likeliest to be alive
            idle.session.trace = trace
            if trace is not None:
                trace.event(
                    f"reusing a connection to {self.options.display} idle for "
                    f"{now - idle.since:.1f} s ({idle.session.transactions} transaction(s), "
                    f"{idle.session.transport})"
                )
            fresh = idle.ended_cleanly and now - idle.since < FRESH_SECONDS
            if fresh and not check:
                return Lease(idle.session, checked=False)
            if await self._answers_rset(idle.session):
                return Lease(idle.session, checked=True)
            log.info("%s: a pooled connection did not answer RSET; not reused", self.options.label)
        session = await SmtpClientSession.connect(self.options, trace)
        self.connections[session.transport] += 1
        return Lease(session, checked=True)

    async def give_back(self, session: SmtpClientSession, *, ended_cleanly: bool) -> None:
        """Keep ``session`` for reuse if it is usable and the pool open; else close it.
        ``ended_cleanly``: its last transaction got as far as the reply to its data."""
        session.trace = None  # the lessee's trace ends with its delivery
        if session.usable and not self._closed:
            self._idle.append(_Idle(session, trio.current_time(), ended_cleanly))
        else:
            await session.aclose()

    async def aclose(self) -> None:
        """QUIT every idle connection (each bounded) and stop pooling. Idempotent."""
        self._closed = True
        idle, self._idle = self._idle, []
        await _close_all(idle)

    async def _answers_rset(self, session: SmtpClientSession) -> bool:
        try:
            if await session.reset():
                return True
        except BaseException:  # cancelled: the RSET may be half-way
            await session.abort()
            raise
        await session.abort()
        return False

    async def _close_expired(self) -> None:
        """QUIT connections idle for longer than ``IDLE_SECONDS``."""
        now = trio.current_time()
        expired = [idle for idle in self._idle if now - idle.since > IDLE_SECONDS]
        if expired:
            self._idle = [idle for idle in self._idle if idle not in expired]
            await _close_all(expired)


async def _close_all(idle: list[_Idle]) -> None:
    async with trio.open_nursery() as nursery:
        for entry in idle:
            nursery.start_soon(entry.session.aclose)
