"""A strict Mailgun peer: ``POST /v3/{domain}/messages.mime`` as Mailgun documents it.

It runs a stdlib HTTP server on 127.0.0.1 in a thread and checks what a real Mailgun checks:
Basic auth ``api:KEY`` (else 401 with Mailgun's plain ``Forbidden`` body), the domain in the
path (else 404 ``{"message": "Domain not found: …"}``), a multipart/form-data body
(RFC 7578) with a ``message`` *file* field and at least one ``to`` field (else 400 with a
``{"message": …}`` body naming the missing field). Accepted messages are kept whole, with
their ``to`` fields, and answered ``{"id": "<…@domain>", "message": "Queued. Thank you."}``.

``script`` holds answers to give before accepting again (status, headers, body), and
``delay`` makes every answer wait (a timeout test).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import attrs


@attrs.define
class Accepted:
    id: str
    message: bytes
    to: list[str]
    filename: str


@attrs.define
class MailgunPeer:
    domain: str
    key: str
    port: int = 0
    accepted: list[Accepted] = attrs.Factory(list)
    requests: int = 0
    script: list[tuple[int, dict[str, str], bytes]] = attrs.Factory(list)
    delay: float = 0.0
    concurrent: int = 0  # requests being answered now, and the most at once
    most_concurrent: int = 0
    lock: threading.Lock = attrs.Factory(threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def parse_form(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/form-data body: (Content-Disposition parameters plus
    ``content-type``, raw bytes). Raises ValueError for anything malformed."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise ValueError(f"expected multipart/form-data, got {kind.strip()!r}")
    boundary = ""
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise ValueError("multipart/form-data without a boundary")
    delimiter = b"--" + boundary.encode()
    chunks = body.split(b"\r\n" + delimiter)
    if not chunks[0].startswith(delimiter) or not chunks[-1].startswith(b"--"):
        raise ValueError("the multipart body is not delimited by its boundary")
    chunks[0] = chunks[0][len(delimiter) :]
    parts = []
    for chunk in chunks[:-1]:
        head, sep, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a part without a blank line after its headers")
        fields: dict[str, str] = {}
        for line in head.decode("utf-8").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "content-type":
                fields["content-type"] = value.strip()
            elif name.lower() == "content-disposition":
                for item in value.split(";")[1:]:
                    key, _, val = item.strip().partition("=")
                    fields[key] = val.strip('"')
        parts.append((fields, data))
    return parts


def _handler(peer: MailgunPeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Mailgun's front end does

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
                self.close_connection = True  # the client gave up (a timeout test)

        def do_POST(self) -> None:
            with peer.lock:
                peer.concurrent += 1
                peer.most_concurrent = max(peer.most_concurrent, peer.concurrent)
            try:
                self.handle_post()
            finally:
                with peer.lock:
                    peer.concurrent -= 1

        def handle_post(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with peer.lock:
                peer.requests += 1
                scripted = peer.script.pop(0) if peer.script else None
            expected = "Basic " + base64.b64encode(f"api:{peer.key}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                self.answer(401, b"Forbidden", {"Content-Type": "text/plain"})
                return
            if self.path != f"/v3/{peer.domain}/messages.mime":
                domain = self.path.split("/")[2] if self.path.count("/") > 2 else ""
                self.answer(404, json.dumps({"message": f"Domain not found: {domain}"}).encode())
                return
            if scripted is not None:
                self.answer(scripted[0], scripted[2], scripted[1])
                return
            self.accept(body)

        def accept(self, body: bytes) -> None:
            try:
                parts = parse_form(self.headers.get("Content-Type", ""), body)
            except ValueError as exc:
                self.answer(400, json.dumps({"message": str(exc)}).encode())
                return
            message = [(f, d) for f, d in parts if f.get("name") == "message"]
            to = [d.decode("utf-8") for f, d in parts if f.get("name") == "to"]
            if len(message) != 1 or "filename" not in message[0][0]:
                self.answer(400, b'{"message": "\'message\' parameter is missing"}')
                return
            if not to:
                self.answer(400, b'{"message": "\'to\' parameter is missing"}')
                return
            remote_id = f"<{uuid.uuid4().hex}@{peer.domain}>"
            with peer.lock:
                peer.accepted.append(
                    Accepted(remote_id, message[0][1], to, message[0][0]["filename"])
                )
            self.answer(
                200, json.dumps({"id": remote_id, "message": "Queued. Thank you."}).encode()
            )

    return Handler


@contextmanager
def mailgun_peer(domain: str = "mg.example.test", key: str = "key-peer") -> Iterator[MailgunPeer]:
    """A running peer on 127.0.0.1 (an ephemeral port), stopped when the block ends."""
    peer = MailgunPeer(domain, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(peer))
    server.daemon_threads = True
    peer.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="mailgun-peer", daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
