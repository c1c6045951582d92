"""The envelope of a spooled message, and its versioned JSON form (``<id>.json``).

An :class:`Envelope` is everything about a message except its bytes: who sent it to whom,
where it came from, and how delivery has gone so far. It is immutable; every change makes a
new one (``attrs.evolve`` or the helpers below) which the spool then writes atomically.

The JSON form carries ``"v": 1``. Fields added since (a result's ``route``, ``deferrals``,
``dsn``, ``delay_warned``, ``bounced``) are optional when decoding, so envelopes written before them
load unchanged; a build that predates them ignores them. Decoding checks every field's type,
so a truncated, hand-edited or foreign file fails with a :class:`CorruptEnvelopeError` that
names what is wrong instead of surfacing later as an ``AttributeError`` in a delivery worker.
Encoding uses ``ensure_ascii`` so that addresses containing lone surrogates (bytes that were
not UTF-8, decoded with ``surrogateescape``) survive the round trip.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, cast

import attrs

from dispatch.smtp.dsn import MailDsn, RcptDsn
from dispatch.spool.errors import CorruptEnvelopeError
from dispatch.spool.ids import is_valid_id

FORMAT_VERSION: Final = 1

# "bounce": a delivery status notification Dispatch wrote itself (dispatch/delivery/bounces.py).
Source = Literal["smtp", "api", "bounce"]
ResultStatus = Literal["delivered", "failed"]
_SOURCES: Final = frozenset({"smtp", "api", "bounce"})
_RESULT_STATUSES: Final = frozenset({"delivered", "failed"})


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):  # a lone string would become a tuple of characters
        raise TypeError(f"expected a sequence of strings, got the string {value!r}")
    return tuple(value)


@attrs.frozen
class RecipientResult:
    """The final outcome of delivery to one recipient.

    Only final outcomes are recorded: ``delivered``, or ``failed`` for a permanent rejection
    (5xx). A transient failure is not a result; the recipient stays pending.
    """

    status: ResultStatus
    response: str
    relay: str | None
    at: float
    route: str | None = None  # the routing decision's label (``routes[2]``, ``default``)
    # What a delivery status notification about this result says; known only in the attempt
    # that gave it, so never written to the envelope file: the upstream host that answered,
    # and whether it took over the DSN duty (it offers DSN, RFC 3461 §5.2.2).
    remote_mta: str | None = attrs.field(default=None, eq=False)
    dsn_passed: bool = attrs.field(default=False, eq=False)


@attrs.frozen
class Deferral:
    """Why a pending recipient waits: its last transient outcome (a 4xx reply, a refused
    connection), the relay and route that gave it, and when. Replaced at each attempt that
    defers the recipient again; dropped once the recipient has a final result."""

    response: str
    relay: str | None
    route: str | None
    at: float


def _freeze_results(value: Mapping[str, RecipientResult]) -> Mapping[str, RecipientResult]:
    return MappingProxyType(dict(value))


def _freeze_deferrals(value: Mapping[str, Deferral]) -> Mapping[str, Deferral]:
    return MappingProxyType(dict(value))


def _freeze_rcpt_dsn(value: Mapping[str, RcptDsn]) -> Mapping[str, RcptDsn]:
    return MappingProxyType(dict(value))


_NO_RESULTS: Final[Mapping[str, RecipientResult]] = MappingProxyType({})
_NO_RCPT_DSN: Final[Mapping[str, RcptDsn]] = MappingProxyType({})
NO_MAIL_DSN: Final = MailDsn()
_NO_DEFERRALS: Final[Mapping[str, Deferral]] = MappingProxyType({})
_DEFAULT_RCPT_DSN: Final = RcptDsn()


@attrs.frozen
class Envelope:
    """A spooled message's envelope: intake facts plus delivery progress.

    The intake facts (``mail_from`` to ``size``) never change after the message is accepted;
    the delivery fields (``attempts`` to ``recipient_results``) are updated by the delivery
    workers through :meth:`Spool.release` and :meth:`Spool.mark_failed`.
    """

    id: str
    mail_from: str  # "" is the null reverse path <> (bounces)
    recipients: tuple[str, ...] = attrs.field(converter=_str_tuple)
    source: Source
    peer_ip: str | None
    auth_identity: str | None  # SMTP AUTH user or API key prefix
    tags: tuple[str, ...] = attrs.field(converter=_str_tuple)
    received_at: float
    size: int  # bytes of the .eml file
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    recipient_results: Mapping[str, RecipientResult] = attrs.field(
        default=_NO_RESULTS, converter=_freeze_results, hash=False
    )
    deferrals: Mapping[str, Deferral] = attrs.field(
        default=_NO_DEFERRALS, converter=_freeze_deferrals, hash=False
    )
    # RFC 3461: the MAIL (RET, ENVID) and per-recipient (NOTIFY, ORCPT) DSN parameters the
    # message came with; intake facts like the addresses. Absent: none were given.
    mail_dsn: MailDsn = NO_MAIL_DSN
    recipient_dsn: Mapping[str, RcptDsn] = attrs.field(
        default=_NO_RCPT_DSN, converter=_freeze_rcpt_dsn, hash=False
    )
    delay_warned: bool = False  # a "delayed" DSN went out (at most one per message)
    bounced: bool = False  # the failure DSN went out: an operator's retry sends no second one

    def __attrs_post_init__(self) -> None:
        if not is_valid_id(self.id):
            raise ValueError(f"{self.id!r} is not a spool message id")
        if not self.recipients:
            raise ValueError(f"message {self.id}: an envelope needs at least one recipient")
        if self.source not in _SOURCES:
            raise ValueError(f"message {self.id}: source must be 'smtp', 'api' or 'bounce'")
        if self.size < 0 or self.attempts < 0:
            raise ValueError(f"message {self.id}: size and attempts cannot be negative")
        unknown = set(self.recipient_results) - set(self.recipients)
        if unknown:
            raise ValueError(f"message {self.id}: results for non-recipients {sorted(unknown)}")
        unknown = set(self.deferrals) - set(self.recipients)
        if unknown:
            raise ValueError(f"message {self.id}: deferrals for non-recipients {sorted(unknown)}")
        unknown = set(self.recipient_dsn) - set(self.recipients)
        if unknown:
            raise ValueError(
                f"message {self.id}: DSN parameters for non-recipients {sorted(unknown)}"
            )

    def dsn_of(self, recipient: str) -> RcptDsn:
        """The recipient's NOTIFY and ORCPT (none given: the defaults of RFC 3461 §4.1)."""
        return self.recipient_dsn.get(recipient, _DEFAULT_RCPT_DSN)

    @property
    def pending_recipients(self) -> tuple[str, ...]:
        """Recipients without a final result yet, in envelope order: the ones to (re)try."""
        done = self.recipient_results
        return tuple(rcpt for rcpt in self.recipients if rcpt not in done)

    def after_attempt(
        self,
        *,
        next_attempt_at: float,
        error: str | None,
        results: Mapping[str, RecipientResult] | None = None,
        deferrals: Mapping[str, Deferral] | None = None,
    ) -> Envelope:
        """Return this envelope after one more delivery attempt.

        ``results`` are merged into the recorded ones (recipients finished in this attempt);
        ``deferrals`` (recipients deferred in this attempt) replace those recipients' earlier
        ones, and a recipient with a final result keeps none; ``error`` becomes
        ``last_error``. Pass the result to :meth:`Spool.release` or :meth:`Spool.mark_failed`.
        """
        merged = dict(self.recipient_results)
        merged.update(results or {})
        deferred = {**self.deferrals, **(deferrals or {})}
        return attrs.evolve(
            self,
            attempts=self.attempts + 1,
            next_attempt_at=next_attempt_at,
            last_error=error,
            recipient_results=merged,
            deferrals={rcpt: d for rcpt, d in deferred.items() if rcpt not in merged},
        )

    def same_message(self, other: Envelope) -> bool:
        """Tell whether ``other`` has the same id and intake facts (delivery fields may differ)."""
        return (
            self.id,
            self.mail_from,
            self.recipients,
            self.source,
            self.peer_ip,
            self.auth_identity,
            self.tags,
            self.received_at,
            self.size,
        ) == (
            other.id,
            other.mail_from,
            other.recipients,
            other.source,
            other.peer_ip,
            other.auth_identity,
            other.tags,
            other.received_at,
            other.size,
        ) and (self.mail_dsn, dict(self.recipient_dsn)) == (
            other.mail_dsn,
            dict(other.recipient_dsn),
        )

    def to_json(self) -> bytes:
        """Encode as version-1 JSON (UTF-8, ASCII-only, one line)."""
        return json.dumps(self.to_document(), separators=(",", ":")).encode("ascii")

    def to_document(self) -> dict[str, object]:
        """The version-1 JSON document as objects, for a caller that nests it in its own."""
        document: dict[str, object] = {
            "v": FORMAT_VERSION,
            "id": self.id,
            "mail_from": self.mail_from,
            "recipients": list(self.recipients),
            "source": self.source,
            "peer_ip": self.peer_ip,
            "auth_identity": self.auth_identity,
            "tags": list(self.tags),
            "received_at": self.received_at,
            "size": self.size,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "recipient_results": {
                rcpt: {
                    "status": result.status,
                    "response": result.response,
                    "relay": result.relay,
                    "route": result.route,
                    "at": result.at,
                }
                for rcpt, result in self.recipient_results.items()
            },
        }
        if self.deferrals:  # absent when empty: most envelopes never had one
            document["deferrals"] = {
                rcpt: {
                    "response": deferral.response,
                    "relay": deferral.relay,
                    "route": deferral.route,
                    "at": deferral.at,
                }
                for rcpt, deferral in self.deferrals.items()
            }
        if self.mail_dsn != NO_MAIL_DSN or self.recipient_dsn:  # absent: no DSN parameters
            document["dsn"] = {
                "ret": self.mail_dsn.ret,
                "envid": self.mail_dsn.envid,
                "recipients": {
                    rcpt: {
                        "notify": None if dsn.notify is None else list(dsn.notify),
                        "orcpt": dsn.orcpt,
                    }
                    for rcpt, dsn in self.recipient_dsn.items()
                },
            }
        if self.delay_warned:
            document["delay_warned"] = True
        if self.bounced:
            document["bounced"] = True
        return document

    @classmethod
    def from_json(cls, data: bytes, *, path: str | os.PathLike[str] | None = None) -> Envelope:
        """Decode an envelope file's bytes; raise :class:`CorruptEnvelopeError` if invalid.

        ``path`` only makes the error message name the file.
        """
        where = None if path is None else Path(path)
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptEnvelopeError(f"envelope is not valid JSON ({exc})", path=where) from None
        return cls.from_document(document, path=where)

    @classmethod
    def from_document(cls, document: object, *, path: Path | None = None) -> Envelope:
        """Decode what :meth:`to_document` made (found nested in another document); raise
        :class:`CorruptEnvelopeError` if invalid."""
        try:
            return _decode_document(document)
        except (TypeError, ValueError) as exc:
            raise CorruptEnvelopeError(f"invalid envelope: {exc}", path=path) from None


# Field checks, table-driven: start-up decodes every envelope in the spool (100,000 of them
# must load in seconds), so each check is one exact type test rather than a call chain.
_STRINGS: Final = ("id", "mail_from", "source")
_OPTIONAL_STRINGS: Final = ("peer_ip", "auth_identity", "last_error")
_INTEGERS: Final = ("size", "attempts")
_NUMBERS: Final = ("received_at", "next_attempt_at")
_STRING_LISTS: Final = ("recipients", "tags")


def _decode_document(document: object) -> Envelope:
    if type(document) is not dict:
        raise TypeError("top level is not an object")
    doc = cast(dict[str, Any], document)
    version = doc.get("v")
    if version != FORMAT_VERSION or type(version) is not int:
        raise ValueError(f"unsupported format version {version!r} (this build reads v1)")
    for name in _STRINGS:
        if type(doc.get(name)) is not str:
            raise _bad_field(doc, name, "str")
    for name in _OPTIONAL_STRINGS:
        value = doc.get(name)
        if value is not None and type(value) is not str:
            raise _bad_field(doc, name, "str")
    for name in _INTEGERS:
        if type(doc.get(name)) is not int:
            raise _bad_field(doc, name, "int")
    for name in _NUMBERS:
        _check_number(doc, name)
    for name in _STRING_LISTS:
        items = doc.get(name)
        if type(items) is not list:
            raise _bad_field(doc, name, "list")
        for item in items:
            if type(item) is not str:
                raise TypeError(f"an item of {name} must be str, not {type(item).__name__}")
    raw_results = doc.get("recipient_results")
    if type(raw_results) is not dict:
        raise _bad_field(doc, "recipient_results", "dict")
    raw_deferrals = doc.get("deferrals", {})
    if type(raw_deferrals) is not dict:
        raise _bad_field(doc, "deferrals", "dict")
    mail_dsn, recipient_dsn = _decode_dsn(doc.get("dsn"))
    delay_warned, bounced = doc.get("delay_warned", False), doc.get("bounced", False)
    if type(delay_warned) is not bool:
        raise _bad_field(doc, "delay_warned", "bool")
    if type(bounced) is not bool:
        raise _bad_field(doc, "bounced", "bool")
    return Envelope(
        id=doc["id"],
        mail_from=doc["mail_from"],
        recipients=doc["recipients"],
        source=doc["source"],
        peer_ip=doc["peer_ip"],
        auth_identity=doc["auth_identity"],
        tags=doc["tags"],
        received_at=float(doc["received_at"]),
        size=doc["size"],
        attempts=doc["attempts"],
        next_attempt_at=float(doc["next_attempt_at"]),
        last_error=doc["last_error"],
        recipient_results={
            rcpt: _decode_result(rcpt, value) for rcpt, value in raw_results.items()
        },
        deferrals={rcpt: _decode_deferral(rcpt, value) for rcpt, value in raw_deferrals.items()},
        mail_dsn=mail_dsn,
        recipient_dsn=recipient_dsn,
        delay_warned=delay_warned,
        bounced=bounced,
    )


def _decode_dsn(value: object) -> tuple[MailDsn, dict[str, RcptDsn]]:
    if value is None:
        return NO_MAIL_DSN, {}
    if type(value) is not dict:
        raise TypeError(f"dsn must be an object, not {type(value).__name__}")
    doc = cast(dict[str, Any], value)
    ret = doc.get("ret")
    if ret not in (None, "FULL", "HDRS"):
        raise ValueError(f"dsn.ret must be FULL, HDRS or null, not {ret!r}")
    envid = _optional_string(doc, "envid")
    raw = doc.get("recipients", {})
    if type(raw) is not dict:
        raise _bad_field(doc, "recipients", "dict")
    recipients: dict[str, RcptDsn] = {}
    for rcpt, item in raw.items():
        if type(item) is not dict:
            raise TypeError(f"the DSN parameters of {rcpt!r} are not an object")
        notify = item.get("notify")
        if notify is not None and (
            type(notify) is not list or not all(type(n) is str for n in notify)
        ):
            raise TypeError(f"dsn notify of {rcpt!r} must be a list of strings or null")
        orcpt = _optional_string(item, "orcpt")
        recipients[rcpt] = RcptDsn(None if notify is None else tuple(notify), orcpt)
    return MailDsn(ret, envid), recipients


def _decode_result(recipient: str, value: object) -> RecipientResult:
    if type(value) is not dict:
        raise TypeError(f"the result for {recipient!r} is not an object")
    doc = cast(dict[str, Any], value)
    status = doc.get("status")
    if status not in _RESULT_STATUSES:
        raise ValueError(f"recipient result status {status!r} is not delivered or failed")
    if type(doc.get("response")) is not str:
        raise _bad_field(doc, "response", "str")
    relay, route = _optional_string(doc, "relay"), _optional_string(doc, "route")
    _check_number(doc, "at")
    return RecipientResult(
        status=status, response=doc["response"], relay=relay, at=float(doc["at"]), route=route
    )


def _decode_deferral(recipient: str, value: object) -> Deferral:
    if type(value) is not dict:
        raise TypeError(f"the deferral for {recipient!r} is not an object")
    doc = cast(dict[str, Any], value)
    if type(doc.get("response")) is not str:
        raise _bad_field(doc, "response", "str")
    relay, route = _optional_string(doc, "relay"), _optional_string(doc, "route")
    _check_number(doc, "at")
    return Deferral(response=doc["response"], relay=relay, route=route, at=float(doc["at"]))


def _optional_string(doc: dict[str, Any], name: str) -> str | None:
    value: str | None = doc.get(name)
    if value is not None and type(value) is not str:
        raise _bad_field(doc, name, "str")
    return value


def _check_number(doc: dict[str, Any], name: str) -> None:
    value = doc.get(name)
    if type(value) is not float and type(value) is not int:
        raise _bad_field(doc, name, "a number")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, not {value}")


def _bad_field(doc: dict[str, Any], name: str, kind: str) -> Exception:
    if name not in doc:
        return ValueError(f"field {name!r} is missing")
    return TypeError(f"{name} must be {kind}, not {type(doc[name]).__name__}")
