"""The one small interface between delivery and every relay kind.

A relay receives a :class:`DeliveryRequest` (the envelope's pending recipients for this
relay and the path of the ``.eml``, whose bytes are sent exactly as stored — for a small
message also those bytes, read when it was claimed) and returns a
:class:`DeliveryResult` with one :class:`RecipientOutcome` per recipient. Ordinary failures —
a refused connection, a timeout, a 4xx or 5xx reply — are outcomes, never exceptions: a
relay raises only for its own bugs, which the delivery worker logs and treats as transient.

Reply classes (RFC 5321 §4.2.1): 2xx delivered, 4xx and network errors ``transient``
(retried later), 5xx ``permanent`` (failed, not retried).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Protocol

import attrs

from dispatch.monitoring.traces import Trace
from dispatch.smtp.dsn import MailDsn, RcptDsn

Outcome = Literal["delivered", "transient", "permanent"]


def _frozen_dsn(value: Mapping[str, RcptDsn]) -> Mapping[str, RcptDsn]:
    return MappingProxyType(dict(value))


@attrs.frozen
class DeliveryRequest:
    message_id: str
    mail_from: str  # "" for the null reverse path
    recipients: tuple[str, ...]
    message_path: Path
    size: int
    smtputf8: bool = False  # some address or header needs SMTPUTF8 (RFC 6531)
    # Header lines a relay sends before the stored bytes: its DKIM-Signature, added by the
    # relay itself (dispatch/relays/dkim_sign.py); the spool file is never changed.
    prefix: bytes = b""
    # RFC 3461 parameters the message came with, passed to an upstream that offers DSN.
    mail_dsn: MailDsn = attrs.field(factory=MailDsn)
    recipient_dsn: Mapping[str, RcptDsn] = attrs.field(factory=dict, converter=_frozen_dsn)
    trace: Trace | None = attrs.field(default=None, eq=False, repr=False)
    """The delivery attempt's trace: a relay that talks to an upstream traces each dialogue
    as its child (:func:`dialogue_trace`)."""
    # The whole .eml when the claim read it (at most one read block: delivery/scanner.py),
    # else None. A relay that can use it sends these bytes instead of reading the file.
    content: bytes | None = attrs.field(default=None, eq=False, repr=False)


def dialogue_trace(
    request: DeliveryRequest, title: str
) -> contextlib.AbstractContextManager[Trace | None]:
    """A ``relay.dialogue`` trace, child of the request's attempt, finished when the block
    ends (None, and nothing traced, for a request without a trace)."""
    if request.trace is None:
        return contextlib.nullcontext()
    return request.trace.child("relay.dialogue", title)


@attrs.frozen
class RecipientOutcome:
    recipient: str
    outcome: Outcome
    response: str  # the upstream's reply text, or what went wrong ("connection refused")


@attrs.frozen
class DeliveryResult:
    outcomes: tuple[RecipientOutcome, ...]
    remote_id: str | None = None  # the upstream's queue id / provider message id, if known
    # The upstream offered DSN and was given the message's DSN parameters: a success notice
    # is its to send now (RFC 3461 §5.2.2), not Dispatch's.
    dsn_passed: bool = False
    remote_mta: str | None = None  # the upstream host that answered, for a DSN's Remote-MTA

    @classmethod
    def all(cls, request: DeliveryRequest, outcome: Outcome, response: str) -> DeliveryResult:
        """The same outcome for every recipient (a connection error, a whole-message reply)."""
        return cls(tuple(RecipientOutcome(r, outcome, response) for r in request.recipients))


def outcome_of_code(code: int) -> Outcome:
    """RFC 5321 §4.2.1: 2yz done, 4yz try again later, 5yz do not try again."""
    if 200 <= code < 300:
        return "delivered"
    return "transient" if code < 500 else "permanent"


class CaptureSink(Protocol):
    """Where the ``local`` relay keeps its copies: the spool's ``captured/`` folder (the Local
    inbox). :class:`~dispatch.spool.Spool` is one; the relays never see the spool itself."""

    async def capture(self, message_id: str) -> Path:
        """Keep a durable copy of the message and its envelope; return the copy's path.

        When no copy could be made (a full disk, a message gone meanwhile) it raises an
        exception whose text says why: the local relay reports that as a transient outcome,
        so the message waits in the spool and is tried again.
        """
        ...


class Relay(Protocol):
    """A configured upstream. Owned by the delivery component; closed on shutdown/reload."""

    name: str
    kind: str

    # Counters for /metrics and /debug/vars, per attempt: deliveries in progress, attempts
    # that delivered to at least one recipient, attempts that left any recipient undelivered.
    @property
    def inflight(self) -> int: ...
    @property
    def delivered(self) -> int: ...
    @property
    def failed(self) -> int: ...

    async def deliver(self, request: DeliveryRequest) -> DeliveryResult:
        """Attempt one delivery. Cancellation: the attempt is abandoned (the connection
        dropped, never reused); the message stays claimed and is released by the caller."""
        ...

    async def aclose(self) -> None:
        """Close pooled connections; idempotent."""
        ...
