"""Suspending a relay whose upstream hangs: fail fast for a while, then one trial at a time.

A connection that runs out of time (connect, greeting, EHLO, TLS: `SessionError.timed_out`)
marks the upstream as hung. For the next ``seconds`` (the relay's ``timeout_seconds``) its
deliveries fail fast (``transient``, retried on schedule) instead of each holding a delivery
worker for a whole timeout; after that one trial connection at a time goes through until one
succeeds. So a hung upstream ties up at most one worker at a time, and other routes keep
delivering; without it every worker could sit in the same timeout at once. A refused
connection costs nothing and suspends nothing.

Each suspension is written to the audit log (SPEC §7, category ``Relay``) when it begins and
when a trial connection lifts it, through the ``audit`` callable the relay was given (the
message log's ``audit`` in the daemon: it never blocks). A trial that times out again extends
the suspension without a new entry, so an upstream down for an hour leaves two rows, not one
per retry.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import trio

from dispatch.relays.smtp_options import SessionError
from dispatch.storage import audit as audit_entries
from dispatch.storage.records import AuditEntry

__all__ = ["AuditSink", "Suspension", "no_audit"]

log = logging.getLogger("dispatch.relays.smarthost")

type AuditSink = Callable[[AuditEntry], None]


def no_audit(entry: AuditEntry) -> None:
    """The audit sink of a relay built without one (tests of other parts): keeps nothing."""


class Suspension:
    """Whether one relay's deliveries fail fast now (see the module docstring).

    Owns its state only (why, until when, whether a trial is under way); uses the Trio clock,
    so it lives in the Trio thread of the relay that owns it.
    """

    def __init__(self, relay: str, seconds: float, audit: AuditSink) -> None:
        self.relay = relay
        self.seconds = seconds
        self._audit = audit
        self._reason = ""  # the error text that suspended the relay; "" when not suspended
        self._until = 0.0
        self._trial = False

    @property
    def suspended(self) -> bool:
        return bool(self._reason)

    @property
    def reason(self) -> str | None:
        """The error that suspended the relay, or None when it is not suspended."""
        return self._reason or None

    def seconds_left(self) -> float:
        """Seconds until a trial connection may go through (0 when not suspended, or when
        the trial is due or under way)."""
        if not self._reason:
            return 0.0
        return max(0.0, self._until - trio.current_time())

    def why_blocked(self) -> str | None:
        """Why a delivery must fail fast right now, or None if it may try to connect."""
        if not self._reason:
            return None
        if trio.current_time() < self._until:
            return f"relay {self.relay}: delivery suspended after: {self._reason}"
        if self._trial:
            return f"relay {self.relay}: a trial connection is under way after: {self._reason}"
        return None

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        """Around one attempt to get a connection that `why_blocked` let through: while the
        relay is suspended it is the trial, and no other gets through until it ends."""
        trial = self.suspended
        self._trial = self._trial or trial
        try:
            yield
        finally:
            if trial:
                self._trial = False

    def failed(self, error: SessionError) -> None:
        """An attempt failed: a transient timeout suspends the relay (or, already suspended,
        keeps it so for another ``seconds``); anything else changes nothing."""
        if error.outcome != "transient" or not error.timed_out:
            return
        if not self._reason:
            log.warning("relay %s: suspended for %g s: %s", self.relay, self.seconds, error.text)
            self._audit(audit_entries.relay_suspended(self.relay, error.detail, self.seconds))
        self._reason = error.text
        self._until = trio.current_time() + self.seconds

    def connected(self) -> None:
        """An attempt got a connection: a suspension, if any, is lifted."""
        if self._reason:
            log.info("relay %s: connected again; suspension lifted", self.relay)
            self._audit(audit_entries.relay_resumed(self.relay))
            self._reason = ""
