"""The link between the main process and one intake worker process: typed messages in frames.

A stream socket pair made by the main process before it starts the worker; each side holds
one end. A frame is a 4-byte big-endian length and a JSON array of messages; each message is
an object whose ``"kind"`` names one of the classes below and whose other keys are exactly
that class's fields.

What travels (see ``intake/processes.py`` and ``intake/worker.py``):

- main → worker: :class:`Start` first (what the worker needs to begin), then
  :class:`ListenerChanged` after each reload that changed a ``listener.*`` key, and
  :class:`SuppressionChanged` whenever the entries intake refuses change;
- worker → main: :class:`Ready`, then :class:`Committed` for each message it wrote into the
  spool (with the message's ``received`` event), :class:`Logged` for each other message-log
  event or audit entry and :class:`Counters` every second. The
  worker sends whatever queued up while its last frame was being written as one frame.

Nothing on the link is pickled: the main process reads what a process facing the network
wrote, so :func:`decode` builds only these classes, from plain JSON, and checks every field.
Records travel in the form they are stored in — an envelope as its file's JSON document, an
event as its journal line's — nested in the frame's JSON (one parse per frame), and are read
back by the spool's and the storage's own strict decoders.
A frame that is not JSON, a kind this side does not receive, a missing or unexpected field or
a field of the wrong type raises :class:`BadMessage`, which names the kind and what is wrong;
the receiving side treats the link as broken (each side's module says what that means).

:meth:`Link.receive` returns ``None`` at end of stream: the other process has gone.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, Self

import attrs
import cattrs
import trio

from dispatch.config.loader import ConfigError, parse_settings
from dispatch.config.settings import ListenerSettings
from dispatch.config.types import Secret
from dispatch.security.certs import CertificateFiles
from dispatch.spool import Envelope
from dispatch.spool.errors import CorruptEnvelopeError
from dispatch.storage.records import (
    MAX_FREE_TEXT,
    LogRecord,
    from_journal_document,
    journal_document,
)
from dispatch.storage.suppression import Suppression

_HEADER: Final = struct.Struct(">I")
# Far above any frame: the settings are a few KiB, and :meth:`Link.send` splits a batch of
# records into frames below this. A bigger length means the stream is not frames at all.
MAX_FRAME: Final = 64 << 20


class LinkBroken(Exception):
    """The other end sent something that is not a frame."""


class BadMessage(LinkBroken):
    """A frame arrived whole, but it is not a batch of messages this side receives."""


# --- the messages ----------------------------------------------------------------------------

# Settings classes go over the link as the TOML tables they were loaded from, and come back
# through the loader itself: the worker gets listener settings exactly as strictly checked
# as the file was, with the same messages for anything wrong.
_TABLES: Final = cattrs.Converter()
_TABLES.register_unstructure_hook(Secret, Secret.reveal)


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a string, got {type(value).__name__}")
    return value


def _listener(value: object) -> ListenerSettings:
    if not isinstance(value, dict):
        raise TypeError(f"listener: expected an object, got {type(value).__name__}")
    try:
        return parse_settings({"listener": value}, "the listener settings").listener
    except ConfigError as exc:
        raise ValueError("; ".join(map(str, exc.problems))) from None


@attrs.frozen
class Start:
    """main → worker, always first: the listener settings, the spool and the certificate."""

    KIND: ClassVar = "start"
    listener: ListenerSettings
    spool_directory: str
    certificate: CertificateFiles

    def fields(self) -> dict[str, object]:
        files = self.certificate
        return {
            "listener": _TABLES.unstructure(self.listener),
            "spool_directory": self.spool_directory,
            "certificate": [str(files.cert_file), str(files.key_file), files.self_signed],
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        match fields["certificate"]:
            case [str() as cert, str() as key, bool() as self_signed]:
                files = CertificateFiles(Path(cert), Path(key), self_signed)
            case other:
                raise TypeError(f"certificate: expected [cert, key, self-signed], got {other!r}")
        spool_directory = _text(fields["spool_directory"], "spool_directory")
        return cls(_listener(fields["listener"]), spool_directory, files)


@attrs.frozen
class ListenerChanged:
    """main → worker: a reload changed ``listener.*``; these are the settings from now on."""

    KIND: ClassVar = "listener_changed"
    listener: ListenerSettings

    def fields(self) -> dict[str, object]:
        return {"listener": _TABLES.unstructure(self.listener)}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        return cls(_listener(fields["listener"]))


def _suppression(item: object) -> Suppression:
    match item:
        case [str() as address, str() as reason, str() | None as message_id, float() | int() as
              created_at, float() | int() as expires_at]:  # fmt: skip
            return Suppression(
                address=address,
                reason=reason,
                message_id=message_id,
                created_at=float(created_at),
                expires_at=float(expires_at),
            )
    raise TypeError(
        "entries: expected [address, reason, message id, created at, expires at], "
        f"got {item!r:.100}"
    )


@attrs.frozen
class SuppressionChanged:
    """main → worker: the suppression list's entries in force that intake refuses at RCPT
    (none when the list is off or in ``delivery`` mode); replaces the previous ones."""

    KIND: ClassVar = "suppression_changed"
    entries: tuple[Suppression, ...]

    def fields(self) -> dict[str, object]:
        return {"entries": [list(attrs.astuple(entry)) for entry in self.entries]}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        items = fields["entries"]
        if not isinstance(items, list):
            raise TypeError(f"entries: expected a list, got {type(items).__name__}")
        return cls(tuple(_suppression(item) for item in items))


@attrs.frozen
class Ready:
    """worker → main: settings applied, certificate loaded; it accepts connections now."""

    KIND: ClassVar = "ready"

    def fields(self) -> dict[str, object]:
        return {}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        return cls()


@attrs.frozen
class Committed:
    """worker → main: this envelope is in ``incoming/`` (its ``250`` may already be out).

    ``received``: the message's ``received`` event travels in this message (the session's
    ``IntakeContext.received``); the main process records it from the envelope and
    ``subject`` (:func:`dispatch.intake.records.received`), so the worker need not send, nor
    the main process decode, the event's two dozen fields apart. False: it comes as
    :class:`Logged`, or not at all.
    """

    KIND: ClassVar = "committed"
    envelope: Envelope
    # The envelope's JSON as the commit wrote it (``on_commit``): sent as it is, not encoded
    # again. Not part of the message's value (nor a field on the wire); decoded, it is None.
    encoded: bytes | None = attrs.field(
        default=None, eq=False, repr=False, metadata={"wire": False}
    )
    received: bool = False
    subject: str | None = None

    def as_sent(self) -> bytes | None:
        """The message as :func:`encode_one` would make it, from the commit's bytes."""
        if self.encoded is None:
            return None
        received = b"true" if self.received else b"false"
        subject = json.dumps(self.subject).encode("ascii")
        return b'{"kind":"committed","envelope":%b,"received":%b,"subject":%b}' % (
            self.encoded,
            received,
            subject,
        )

    def fields(self) -> dict[str, object]:
        return {
            "envelope": self.envelope.to_document(),  # nested: one parse for the frame
            "received": self.received,
            "subject": self.subject,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        received = fields["received"]
        if not isinstance(received, bool):
            raise TypeError(f"received: expected true or false, got {received!r:.100}")
        subject = fields["subject"]
        if subject is not None and len(_text(subject, "subject")) > MAX_FREE_TEXT:
            raise ValueError(f"subject: longer than {MAX_FREE_TEXT} characters")
        return cls(Envelope.from_document(fields["envelope"]), None, received, subject)


@attrs.frozen
class Logged:
    """worker → main: a message-log event or an audit entry (AUTH throttling) for the main
    process's store."""

    KIND: ClassVar = "logged"
    event: LogRecord

    def fields(self) -> dict[str, object]:
        return {"event": journal_document(self.event)}  # a journal line's document, nested

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        return cls(from_journal_document(fields["event"]))


def _is_histogram(value: object) -> bool:
    match value:
        case [list() as counts, int() | float(), int()]:
            return all(type(c) is int for c in counts)
    return False


def _figure(name: str, value: object) -> object:
    """One figure of :meth:`Stats.take`, checked: a count, counts by label, or a histogram."""
    match value:
        case int() if not isinstance(value, bool):
            return value
        case dict() if all(isinstance(k, str) and type(v) is int for k, v in value.items()):
            return value
        case [list() as counts, int() | float() as total, int() as count] if all(
            type(c) is int for c in counts
        ):
            return (counts, float(total), count)  # the tuple Histogram.take gives
        case dict() if all(isinstance(k, str) and _is_histogram(v) for k, v in value.items()):
            return value  # HistogramMap.take: histograms by label
    raise TypeError(
        f"figures[{name!r}]: expected a count, counts by label, [bucket counts, sum, count]"
        f" or such histograms by label, got {value!r:.100}"
    )


@attrs.frozen
class Counters:
    """worker → main: its figures since the last ones (:meth:`Stats.take`), to be added."""

    KIND: ClassVar = "counters"
    figures: dict[str, Any]

    def fields(self) -> dict[str, object]:
        return {"figures": self.figures}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        figures = fields["figures"]
        if not isinstance(figures, dict):
            raise TypeError(f"figures: expected an object, got {type(figures).__name__}")
        return cls({name: _figure(name, value) for name, value in figures.items()})


type ToWorker = Start | ListenerChanged | SuppressionChanged
type FromWorker = Ready | Committed | Logged | Counters
type Message = ToWorker | FromWorker

TO_WORKER: Final[tuple[type[ToWorker], ...]] = (Start, ListenerChanged, SuppressionChanged)
FROM_WORKER: Final[tuple[type[FromWorker], ...]] = (Ready, Committed, Logged, Counters)
_KINDS: Final[dict[str, type[Message]]] = {cls.KIND: cls for cls in (*TO_WORKER, *FROM_WORKER)}
_FIELDS: Final[dict[str, frozenset[str]]] = {
    kind: frozenset(f.name for f in attrs.fields(cls) if f.metadata.get("wire", True))
    for kind, cls in _KINDS.items()
}
# A well-formed message's keys: its fields and "kind" (one set comparison per message).
_KEYS: Final[dict[str, frozenset[str]]] = {
    kind: names | {"kind"} for kind, names in _FIELDS.items()
}


# --- encoding --------------------------------------------------------------------------------


def encode_one(message: Message) -> bytes:
    """``message`` as one JSON object (ASCII)."""
    if isinstance(message, Committed) and (sent := message.as_sent()) is not None:
        return sent
    document = {"kind": message.KIND, **message.fields()}
    return json.dumps(document, separators=(",", ":")).encode("ascii")


def encode(batch: Sequence[Message]) -> list[bytes]:
    """``batch`` as frame payloads (JSON arrays), as few as fit under :data:`MAX_FRAME`."""
    payloads: list[bytes] = []
    parts: list[bytes] = []
    size = 2
    for message in batch:
        part = encode_one(message)
        if len(part) + 2 > MAX_FRAME:
            raise ValueError(f"a {message.KIND!r} message of {len(part)} bytes is over a frame")
        if parts and size + len(part) + 1 > MAX_FRAME:
            payloads.append(b"[" + b",".join(parts) + b"]")
            parts, size = [], 2
        parts.append(part)
        size += len(part) + 1
    payloads.append(b"[" + b",".join(parts) + b"]")
    return payloads


def decode[R: Message](payload: bytes, receives: tuple[type[R], ...]) -> list[R]:
    """The messages of one frame; :class:`BadMessage` unless each is a kind in ``receives``."""
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadMessage(f"intake link: a frame that is not JSON ({exc})") from None
    if not isinstance(document, list):
        raise BadMessage(f"intake link: a frame must be a JSON array, got {document!r:.100}")
    return [_decode_one(item, receives) for item in document]


def _decode_one[R: Message](item: object, receives: tuple[type[R], ...]) -> R:
    if not isinstance(item, dict) or not isinstance(kind := item.get("kind"), str):
        raise BadMessage(f"intake link: a message must be an object with a kind: {item!r:.100}")
    cls = _KINDS.get(kind)
    if cls is None or not issubclass(cls, receives):
        expected = ", ".join(repr(r.KIND) for r in receives)
        known = "not sent this way" if cls is not None else "unknown"
        raise BadMessage(
            f"intake link: message kind {kind!r} is {known}; expected one of {expected}"
        )
    if item.keys() != _KEYS[kind]:
        names = _FIELDS[kind]
        if missing := sorted(names - item.keys()):
            raise BadMessage(f"intake link: {kind!r} message without {', '.join(missing)}")
        extra = sorted(item.keys() - _KEYS[kind])
        raise BadMessage(f"intake link: {kind!r} message with unknown field(s) {', '.join(extra)}")
    try:
        message = cls.from_fields(item)  # reads its fields by name; "kind" is not one
    except (TypeError, ValueError, CorruptEnvelopeError) as exc:
        # attrs validators put the message first and the attribute and value after it
        reason = exc.args[0] if len(exc.args) > 1 else exc
        raise BadMessage(f"intake link: malformed {kind!r} message: {reason}") from None
    assert isinstance(message, receives)  # from_fields builds its own class
    return message


# --- the socket ------------------------------------------------------------------------------


class Link[R: Message]:
    """One end of the pair, receiving the kinds in ``receives``; sends are serialised."""

    def __init__(self, stream: trio.SocketStream, receives: tuple[type[R], ...]) -> None:
        self._stream = stream
        self._receives = receives
        self._buffer = bytearray()
        self._send_lock = trio.Lock()

    async def send(self, batch: Sequence[Message]) -> None:
        """Send ``batch`` in order (one frame, or a few if it is very large)."""
        frames = b"".join(_HEADER.pack(len(p)) + p for p in encode(batch))
        async with self._send_lock:
            await self._stream.send_all(frames)

    async def receive(self) -> list[R] | None:
        """The messages of the next frame, or ``None`` once the other end closed the link."""
        while True:
            if len(self._buffer) >= _HEADER.size:
                (length,) = _HEADER.unpack_from(self._buffer)
                if length > MAX_FRAME:
                    raise LinkBroken(f"frame of {length} bytes")
                end = _HEADER.size + length
                if len(self._buffer) >= end:
                    payload = bytes(self._buffer[_HEADER.size : end])
                    del self._buffer[:end]
                    return decode(payload, self._receives)
            data = await self._stream.receive_some(1 << 16)
            if not data:
                if self._buffer:
                    raise LinkBroken("the link closed in the middle of a frame")
                return None
            self._buffer += data

    async def aclose(self) -> None:
        await self._stream.aclose()
