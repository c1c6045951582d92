"""The records storage keeps: one :class:`MessageEvent` per message event, and :class:`AuditEntry`.

Both are immutable values that intake, delivery and the web apps hand to
:meth:`MessageLog.record` / :meth:`MessageLog.audit`. Each carries an ``event_id`` made when
it is created; the database has a UNIQUE index on it, which is what makes writing the same
record twice (a journal replayed after a crash mid-replay) a no-op instead of a duplicate.

Every text field is made storable when the record is built, never when it is written: lone
surrogates (bytes that were not UTF-8, decoded with ``surrogateescape`` by the SMTP parser)
become ``\\udcxx`` escapes, because SQLite and PostgreSQL only store valid UTF-8 and a record
the writer cannot store would block every record queued behind it. Free-text fields a peer
controls (subject, response) are cut to :data:`MAX_FREE_TEXT` characters.

Two forms besides the object: a journal line (:func:`to_journal`, :func:`from_journal`, JSON
with a ``"type"`` key) and a database row (``MESSAGE_COLUMNS`` / :func:`message_from_row`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal, get_args

import attrs

EventKind = Literal["received", "delivered", "retried", "failed", "denied"]
Source = Literal["smtp", "api"]
AuditCategory = Literal["Auth", "Config", "ApiKey", "Relay", "System"]
AuditLevel = Literal["Info", "Notice", "Warning"]

EVENT_KINDS: Final[tuple[EventKind, ...]] = get_args(EventKind)
SOURCES: Final[tuple[Source, ...]] = get_args(Source)
AUDIT_CATEGORIES: Final[tuple[AuditCategory, ...]] = get_args(AuditCategory)
AUDIT_LEVELS: Final[tuple[AuditLevel, ...]] = get_args(AuditLevel)

# A subject or an upstream response longer than this is cut: a hostile peer must not make
# every queued record (and row) arbitrarily large.
MAX_FREE_TEXT: Final = 1000


def new_event_id() -> str:
    """A fresh unique record id: 32 hex digits, the time in nanoseconds then 64 random bits
    (unique across nodes sharing a DB). Time first, so that the ids of one batch sort
    together: their ``UNIQUE`` index takes them in one or two pages, where random ids went to
    as many pages as rows, each written again to the database's log at every commit."""
    return f"{time.time_ns():016x}{os.urandom(8).hex()}"


def storable(text: str) -> str:
    """``text`` with lone surrogates replaced by ``\\udcxx`` escapes (valid UTF-8 for any DB)."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _optional_text(value: str | None) -> str | None:
    return None if value is None else storable(value)


def _free_text(value: str | None) -> str | None:
    return None if value is None else storable(value[:MAX_FREE_TEXT])


def _texts(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):  # a lone string would become a tuple of characters
        raise TypeError(f"expected a sequence of strings, got the string {value!r}")
    return tuple(storable(item) for item in value)


@attrs.frozen(kw_only=True)
class MessageEvent:
    """One thing that happened to one message: a row of ``message_log``.

    ``message_id`` is the spool id (``None`` for a ``denied`` event before any id existed).
    ``at`` is Unix time in seconds; it decides the UTC day and minute the event is counted
    in, however late the row reaches the database. ``row_id`` is the database's ``id``
    column: ``None`` until read back, and not part of equality.
    """

    message_id: str | None = attrs.field(converter=_optional_text)
    event: EventKind = attrs.field(validator=attrs.validators.in_(EVENT_KINDS))
    at: float = attrs.field(factory=time.time, converter=float)
    source: Source | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(SOURCES))
    )
    peer_ip: str | None = attrs.field(default=None, converter=_optional_text)
    sender: str | None = attrs.field(default=None, converter=_optional_text)
    recipients: tuple[str, ...] = attrs.field(default=(), converter=_texts)
    subject: str | None = attrs.field(default=None, converter=_free_text)
    size: int | None = None
    tags: tuple[str, ...] = attrs.field(default=(), converter=_texts)
    relay: str | None = attrs.field(default=None, converter=_optional_text)
    route: str | None = attrs.field(default=None, converter=_optional_text)
    attempt: int | None = None
    duration_ms: float | None = None
    response: str | None = attrs.field(default=None, converter=_free_text)
    remote_id: str | None = attrs.field(default=None, converter=_optional_text)
    api_key_prefix: str | None = attrs.field(default=None, converter=_optional_text)
    event_id: str = attrs.field(factory=new_event_id)
    row_id: int | None = attrs.field(default=None, eq=False)


@attrs.frozen(kw_only=True)
class AuditEntry:
    """One line of the audit log: who did what to the configuration, keys, relays or login."""

    category: AuditCategory = attrs.field(validator=attrs.validators.in_(AUDIT_CATEGORIES))
    level: AuditLevel = attrs.field(validator=attrs.validators.in_(AUDIT_LEVELS))
    message: str = attrs.field(converter=storable)
    actor: str | None = attrs.field(default=None, converter=_optional_text)
    at: float = attrs.field(factory=time.time, converter=float)
    event_id: str = attrs.field(factory=new_event_id)
    row_id: int | None = attrs.field(default=None, eq=False)


type LogRecord = MessageEvent | AuditEntry

# ---------------------------------------------------------------------------------------------
# Database rows. The column order here is the order of every INSERT and SELECT.

MESSAGE_COLUMNS: Final = (
    "event_id",
    "message_id",
    "event",
    "at",
    "source",
    "peer_ip",
    "sender",
    "recipients",
    "subject",
    "size",
    "tags",
    "relay",
    "route",
    "attempt",
    "duration_ms",
    "response",
    "remote_id",
    "api_key_prefix",
)
AUDIT_COLUMNS: Final = ("event_id", "at", "category", "level", "actor", "message")


# Where MESSAGE_COLUMNS has the two lists, stored as JSON text.
_LIST_COLUMNS: Final = (MESSAGE_COLUMNS.index("recipients"), MESSAGE_COLUMNS.index("tags"))


def message_to_row(event: MessageEvent) -> tuple[object, ...]:
    """The values of ``MESSAGE_COLUMNS`` for ``event`` (lists as JSON text)."""
    row: list[object] = [getattr(event, column) for column in MESSAGE_COLUMNS]
    for index in _LIST_COLUMNS:
        row[index] = json.dumps(list(getattr(event, MESSAGE_COLUMNS[index])))
    return tuple(row)


def message_from_row(row: Sequence[Any]) -> MessageEvent:
    """A :class:`MessageEvent` from ``(id, *MESSAGE_COLUMNS)``."""
    values = dict(zip(MESSAGE_COLUMNS, row[1:], strict=True))
    values["recipients"] = json.loads(values["recipients"])
    values["tags"] = json.loads(values["tags"])
    return MessageEvent(row_id=row[0], **values)


def audit_to_row(entry: AuditEntry) -> tuple[object, ...]:
    return tuple(getattr(entry, column) for column in AUDIT_COLUMNS)


def audit_from_row(row: Sequence[Any]) -> AuditEntry:
    """An :class:`AuditEntry` from ``(id, *AUDIT_COLUMNS)``."""
    return AuditEntry(row_id=row[0], **dict(zip(AUDIT_COLUMNS, row[1:], strict=True)))


# ---------------------------------------------------------------------------------------------
# Journal lines: one JSON object per record, {"type": "message" | "audit", <fields>}.

_TYPES: Final[Mapping[str, type[MessageEvent] | type[AuditEntry]]] = {
    "message": MessageEvent,
    "audit": AuditEntry,
}
# A record's fields as a journal line carries them: all but the database's row id.
_JOURNAL_FIELDS: Final[Mapping[type, tuple[str, ...]]] = {
    kind: tuple(field.name for field in attrs.fields(kind) if field.name != "row_id")
    for kind in _TYPES.values()
}


def to_journal(record: LogRecord) -> bytes:
    """One journal line for ``record``, newline included (ASCII-only JSON)."""
    return json.dumps(journal_document(record), separators=(",", ":")).encode("ascii") + b"\n"


def journal_document(record: LogRecord) -> dict[str, object]:
    """A journal line's JSON document as objects, for a caller that nests it in its own."""
    fields = {name: getattr(record, name) for name in _JOURNAL_FIELDS[type(record)]}
    for name in ("recipients", "tags"):
        if name in fields:
            fields[name] = list(fields[name])
    return {"type": "message" if isinstance(record, MessageEvent) else "audit", **fields}


def from_journal(line: bytes) -> LogRecord:
    """Decode one journal line; raise :class:`ValueError` if it is not a valid record."""
    try:
        document = json.loads(line)
    except UnicodeDecodeError as exc:
        raise ValueError(f"not a log record: {exc!r}") from None
    return from_journal_document(document)


def from_journal_document(document: object) -> LogRecord:
    """Decode what :func:`journal_document` made; :class:`ValueError` if it is not a record."""
    if not isinstance(document, dict):
        raise ValueError(f"not a log record: {document!r:.100}")
    fields = dict(document)
    try:
        cls = _TYPES[fields.pop("type")]
        return cls(**fields)
    except (TypeError, KeyError, AttributeError) as exc:  # AttributeError: a field not text
        raise ValueError(f"not a log record: {exc!r}") from None
