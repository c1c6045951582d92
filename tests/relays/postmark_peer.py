"""A strict Postmark peer: ``POST /email`` as Postmark documents it.

It runs a stdlib HTTP server on 127.0.0.1 in a thread and checks what Postmark checks: the
``X-Postmark-Server-Token`` header (else 401 ``ErrorCode`` 10), ``Accept`` and
``Content-Type: application/json`` (else 422 ``ErrorCode`` 409 "JSON required"), a JSON
object (else 422 ``ErrorCode`` 402 "Invalid JSON") with only Postmark's field names (else 422
``ErrorCode`` 403), ``From`` and ``To`` present (else 422 ``ErrorCode`` 300), ``Headers``
as ``[{Name, Value}]`` and ``Attachments`` as ``[{Name, Content, ContentType[, ContentID]}]``
with base64 content (else 422 ``ErrorCode`` 300), and the configured ``MessageStream`` (else
422 ``ErrorCode`` 1235). Accepted bodies are kept and answered with Postmark's success shape
(``To``, ``SubmittedAt``, ``MessageID``, ``ErrorCode`` 0, ``Message`` "OK").

``script`` holds answers to give before accepting again (status, headers, body), and
``delay`` makes every answer wait (a timeout test).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs

FIELDS = frozenset(
    {
        "From", "To", "Cc", "Bcc", "Subject", "Tag", "HtmlBody", "TextBody", "ReplyTo",
        "Headers", "TrackOpens", "TrackLinks", "Metadata", "Attachments", "MessageStream",
    }
)  # fmt: skip


@attrs.define
class PostmarkPeer:
    token: str
    stream: str = "outbound"
    port: int = 0
    accepted: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)  # (MessageID, body)
    requests: int = 0
    script: list[tuple[int, dict[str, str], bytes]] = attrs.Factory(list)
    delay: float = 0.0
    lock: threading.Lock = attrs.Factory(threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def check(body: object, stream: str) -> tuple[int, str] | None:
    """Postmark's refusal of a JSON body, as (ErrorCode, Message), or None when valid."""
    if not isinstance(body, dict):
        return 402, "Invalid JSON: expected an object"
    unknown = set(body) - FIELDS
    if unknown:
        return 403, f"Incompatible JSON: unknown fields {sorted(unknown)}"
    if not body.get("From") or not body.get("To"):
        return 300, "Invalid email request: From and To are required"
    if body.get("MessageStream", "outbound") != stream:
        return 1235, f"The message stream '{body.get('MessageStream')}' was not found"
    for header in body.get("Headers", []):
        if set(header) != {"Name", "Value"} or not all(isinstance(v, str) for v in header.values()):
            return 300, f"Invalid email request: bad header {header!r}"
    for item in body.get("Attachments", []):
        if not {"Name", "Content", "ContentType"} <= set(item) <= {
            "Name", "Content", "ContentType", "ContentID"
        }:  # fmt: skip
            return 300, f"Invalid email request: bad attachment fields {sorted(item)}"
        try:
            base64.b64decode(item["Content"], validate=True)
        except binascii.Error:
            return 300, f"Invalid email request: attachment {item['Name']} is not base64"
    return None


def _handler(peer: PostmarkPeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None

        def answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            if peer.delay:
                time.sleep(peer.delay)
            self.send_response(status)
            for name, value in (headers or {"Content-Type": "application/json"}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def error(self, status: int, code: int, message: str) -> None:
            self.answer(status, json.dumps({"ErrorCode": code, "Message": message}).encode())

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with peer.lock:
                peer.requests += 1
                scripted = peer.script.pop(0) if peer.script else None
            if self.headers.get("X-Postmark-Server-Token") != peer.token:
                self.error(401, 10, "Request does not contain a valid Server token.")
                return
            if self.path != "/email":
                self.error(404, 0, f"No such endpoint: {self.path}")
                return
            media = self.headers.get("Content-Type", "").split(";")[0].strip()
            if media != "application/json" or self.headers.get("Accept") != "application/json":
                self.error(422, 409, "JSON required: set Accept and Content-Type")
                return
            if scripted is not None:
                self.answer(scripted[0], scripted[2], scripted[1])
                return
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.error(422, 402, "Invalid JSON")
                return
            if (refusal := check(body, peer.stream)) is not None:
                self.error(422, *refusal)
                return
            message_id = str(uuid.uuid4())
            with peer.lock:
                peer.accepted.append((message_id, body))
            now = datetime.datetime.now(datetime.UTC).isoformat()
            answer = {
                "To": body["To"], "SubmittedAt": now, "MessageID": message_id,
                "ErrorCode": 0, "Message": "OK",
            }  # fmt: skip
            self.answer(200, json.dumps(answer).encode())

    return Handler


@contextmanager
def postmark_peer(
    token: str = "server-token",  # noqa: S107 (a test peer's token)
    stream: str = "outbound",
) -> Iterator[PostmarkPeer]:
    """A running peer on 127.0.0.1 (an ephemeral port), stopped when the block ends."""
    peer = PostmarkPeer(token, stream)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(peer))
    server.daemon_threads = True
    peer.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="postmark-peer", daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
