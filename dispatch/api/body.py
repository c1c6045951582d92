"""Request bodies of ``POST /api/v1/messages``: received to disk, parsed and composed in a thread.

Theory of operation
-------------------
:func:`receive_to_file` is called by the gate (:mod:`dispatch.api.gate`) only after the
allow-list, the key and the rate limit have admitted the request. It writes the body, as it
arrives, into ``tmp/api-<random>.body`` under the spool directory (the same file system as
the spool, emptied at start-up by spool recovery), holding at most :data:`FLUSH_BYTES` in
memory, and stops with :class:`BodyTooLarge` the moment ``api.max_message_bytes`` is
passed. The caller owns the returned :class:`ReceivedBody` and must :meth:`discard
<ReceivedBody.discard>` it.

:func:`prepare` turns that file into a :class:`~dispatch.api.compose.Composed` message or
a :class:`BodyRefusal`: JSON is decoded with :func:`json.load`, ``multipart/form-data`` with
Werkzeug's streaming multipart parser reading the file (uploaded files go to anonymous
temporary files in the same ``tmp/`` until composition reads them), then
:func:`~dispatch.api.compose.compose` validates and builds. All of it is CPU work on
hostile input, so :func:`prepare_in_thread` runs it in a worker thread, never on the event
loop; bodies above :data:`LARGE_BODY` take turns in :data:`LARGE_BODY_THREADS` thread,
which bounds the memory that composing big messages takes at once (a 25 MiB body needs
several copies of itself while it is encoded), whatever the number of requests admitted.

Cancellation: thread hops are shielded where a file descriptor would otherwise leak; a
cancelled :func:`receive_to_file` removes its file before the cancellation propagates.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, Any, Final

import attrs
import trio
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import MultiPartParser
from werkzeug.http import parse_options_header

from dispatch.api.compose import Composed, compose
from dispatch.api.problems import ValidationError
from dispatch.api.request import ComposeRequest, UploadedFile
from dispatch.spool.errors import SpoolFullError, translate_os_error
from dispatch.spool.layout import unlink_quietly
from dispatch.web.server import Receive

log = logging.getLogger("dispatch.api")

FLUSH_BYTES: Final = 256 * 1024
"""Bytes of a body held in memory before they are written to its file."""
LARGE_BODY: Final = 1 << 20
LARGE_BODY_THREADS: Final = 1
"""Bodies above :data:`LARGE_BODY` parsed and composed at once. Composing is pure Python,
so a second thread would only share the same core under the GIL, while each composition
holds about six copies of its body (JSON text, decoded strings, encoded lines, the message:
~160 MiB for a 25 MiB body, measured)."""
MAX_JSON_MEMBERS: Final = 1000
"""Members of one JSON object; a valid request has at most 9 fields and 100 headers."""
MAX_FORM_PARTS: Final = 1000
"""Parts of one multipart body (Quart's own default); a message has at most 100 files."""
_READ_CHUNK: Final = 64 * 1024
_FILE_MODE: Final = 0o600


class BodyTooLarge(Exception):
    """The body passed ``api.max_message_bytes`` while it was being received."""


class ClientGone(Exception):
    """The client disconnected before its body was complete."""


@attrs.frozen
class ReceivedBody:
    """A request body on disk. Owned by the request that received it."""

    path: Path
    size: int

    def discard(self) -> None:
        """Remove the file (blocking, but one unlink); idempotent."""
        unlink_quietly(self.path)


@attrs.frozen
class BodyRefusal:
    """Why a body cannot become a message: the status, the JSON error fields and, for a
    temporary failure, ``Retry-After`` seconds."""

    status: int
    error: str
    detail: object
    retry_after: int | None = None


def disk_refusal(exc: OSError, action: str) -> BodyRefusal:
    """The answer when the spool's disk failed us: ``507`` when full, else ``503``."""
    error = translate_os_error(exc, action)
    if isinstance(error, SpoolFullError):
        return BodyRefusal(507, "insufficient storage", "the spool is full; try again later", 60)
    log.error("API request body: %s", error)
    return BodyRefusal(503, "temporarily unable to queue", "try again later", 30)


async def receive_to_file(receive: Receive, directory: Path, limit: int) -> ReceivedBody:
    """Receive the rest of the request body into a new file in ``directory``.

    Raises :class:`BodyTooLarge` past ``limit`` bytes, :class:`ClientGone` on a
    disconnect, :class:`OSError` when the file cannot be written (see :func:`disk_refusal`);
    in every case (and on cancellation) the file is removed first.
    """
    path = directory / f"api-{secrets.token_hex(12)}.body"
    fd = await trio.to_thread.run_sync(_create, path)
    pending: list[bytes] = []
    buffered = size = 0
    try:
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            more = bool(message.get("more_body", False))
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            if chunk:
                pending.append(chunk)
                buffered += len(chunk)
            if pending and (buffered >= FLUSH_BYTES or not more):
                chunks, pending, buffered = pending, [], 0
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_write_all, fd, chunks)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_close_and_remove, fd, path)
        raise
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(os.close, fd)
    return ReceivedBody(path, size)


def _create(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)


def _write_all(fd: int, chunks: list[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]


def _close_and_remove(fd: int, path: Path) -> None:
    try:
        os.close(fd)
    finally:
        unlink_quietly(path)


async def prepare_in_thread(
    body: ReceivedBody,
    content_type: str,
    *,
    message_id_domain: str,
    large_bodies: trio.CapacityLimiter,
) -> Composed | BodyRefusal:
    """:func:`prepare` in a worker thread; bodies above :data:`LARGE_BODY` take a token of
    ``large_bodies`` (:data:`LARGE_BODY_THREADS` of them, owned by the API app)."""
    work = partial(
        prepare, body, content_type, message_id_domain=message_id_domain, now=time.time()
    )
    if body.size <= LARGE_BODY:
        return await trio.to_thread.run_sync(work)
    return await trio.to_thread.run_sync(work, limiter=large_bodies)


def media_type(content_type: str) -> str:
    """The bare media type of a ``Content-Type`` header value, lower case."""
    return content_type.partition(";")[0].strip().lower()


def prepare(
    body: ReceivedBody, content_type: str, *, message_id_domain: str, now: float
) -> Composed | BodyRefusal:
    """Parse, validate and compose the body in ``body`` (blocking: call it in a thread)."""
    kind = media_type(content_type)
    if kind == "application/json":
        try:
            parsed = _read_json(body.path)
        except OSError as exc:
            return disk_refusal(exc, "read the body of an API request")
    elif kind == "multipart/form-data":
        try:
            parsed = _read_multipart(body, content_type)
        except OSError as exc:  # the uploaded files' temporary files, in the spool's tmp/
            return disk_refusal(exc, "store the uploaded files of an API request")
    else:
        return BodyRefusal(
            415, "unsupported media type", "send application/json or multipart/form-data"
        )
    if isinstance(parsed, BodyRefusal):
        return parsed
    try:
        return compose(parsed, message_id_domain=message_id_domain, now=now)
    except ValidationError as exc:
        return BodyRefusal(400, "validation failed", exc.detail)


def _read_json(path: Path) -> ComposeRequest | BodyRefusal:
    try:
        with open(path, "rb") as file:
            raw = file.read()
        text = raw.decode(json.detect_encoding(raw))
        del raw  # a 25 MiB body: one copy fewer while it is parsed
        document = _interruptible_decoder().decode(text)
    except RecursionError:
        # Nesting deeper than the interpreter's stack, e.g. 100 KB of "[": the client's
        # error, answered as such rather than as a 500 with a traceback.
        return BodyRefusal(400, "invalid JSON", "nested too deeply")
    except _TooManyMembers:
        return BodyRefusal(
            400,
            "invalid JSON",
            f"an object with more than {MAX_JSON_MEMBERS} members; a request has at most "
            "9 fields and 100 custom headers",
        )
    except ValueError as exc:  # UnicodeDecodeError included
        return BodyRefusal(400, "invalid JSON", str(exc))
    return ComposeRequest.from_json(document)


class _TooManyMembers(Exception):
    pass


def _bounded_object(
    s_and_end: tuple[str, int], strict: bool, scan_once: Callable[[str, int], Any], *rest: Any
) -> tuple[Any, int]:
    """The standard library's JSON object parser, stopped past :data:`MAX_JSON_MEMBERS`
    members: building a dict of a million keys is C work that holds the GIL for seconds."""
    members = 0

    def counted(text: str, index: int) -> Any:  # called once per member, for its value
        nonlocal members
        members += 1
        if members > MAX_JSON_MEMBERS:
            raise _TooManyMembers
        return scan_once(text, index)

    parsed: tuple[Any, int] = json.decoder.JSONObject(s_and_end, strict, counted, *rest)  # type: ignore[attr-defined]
    return parsed


def _interruptible_decoder() -> json.JSONDecoder:
    """A JSON decoder whose structure is parsed in Python bytecode, strings in C.

    The C scanner holds the GIL for a whole document: 25 MiB holding a million object keys
    took 2 s, during which the event loop (another thread of this process) could not run
    and ``/health`` missed its deadline. Python bytecode lets the GIL go every few
    milliseconds, so a hostile body costs only its own worker thread's time. Honest bodies
    are a few values around long strings, which the C string scanner still reads (a 20 MiB
    message: 0.07 s). A new decoder per call: the scanner's key memo is not thread-safe.
    """
    decoder = json.JSONDecoder()
    decoder.parse_object = _bounded_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


def _read_multipart(body: ReceivedBody, content_type: str) -> ComposeRequest | BodyRefusal:
    form = read_form(body, content_type)
    if isinstance(form, BodyRefusal):
        return form
    return ComposeRequest.from_form(*form)


def read_form(
    body: ReceivedBody, content_type: str
) -> tuple[list[tuple[str, str]], list[UploadedFile]] | BodyRefusal:
    """The text fields (in order per name) and the files of a ``multipart/form-data`` body
    (blocking: call it in a thread). Raises OSError when the files' temporary files fail."""
    boundary = parse_options_header(content_type)[1].get("boundary", "")
    if not boundary:
        return BodyRefusal(
            400, "invalid multipart body", "the Content-Type has no boundary parameter"
        )
    opened: list[IO[bytes]] = []  # every file part's temporary file, closed in any case
    parser = MultiPartParser(
        stream_factory=_in_directory(body.path.parent, opened), max_form_parts=MAX_FORM_PARTS
    )
    try:
        try:
            with open(body.path, "rb") as file:
                fields, files = parser.parse(file, boundary.encode("latin-1"), body.size)
        except RequestEntityTooLarge:
            return BodyRefusal(
                400, "invalid multipart body", f"more than {MAX_FORM_PARTS} parts; send fewer"
            )
        except (ValueError, UnicodeError) as exc:
            return BodyRefusal(400, "invalid multipart body", str(exc) or type(exc).__name__)
        uploads = [
            UploadedFile(name, upload.filename or "", upload.mimetype or "", upload.read())
            for name in files
            for upload in files.getlist(name)
        ]
    finally:
        for stream in opened:
            stream.close()
    pairs = [(name, value) for name in fields for value in fields.getlist(name)]
    return pairs, uploads


def _in_directory(directory: Path, opened: list[IO[bytes]]) -> Callable[..., IO[bytes]]:
    """Werkzeug's stream factory: an anonymous temporary file beside the body file."""

    def factory(
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        stream = tempfile.TemporaryFile("w+b", dir=directory)  # noqa: SIM115 (closed by the caller)
        opened.append(stream)
        return stream

    return factory


__all__ = [
    "BodyRefusal",
    "BodyTooLarge",
    "ClientGone",
    "ReceivedBody",
    "disk_refusal",
    "media_type",
    "prepare",
    "prepare_in_thread",
    "read_form",
    "receive_to_file",
]
