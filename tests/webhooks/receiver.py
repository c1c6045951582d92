"""A real HTTP receiver of webhook calls on 127.0.0.1, in a thread of its own.

:class:`Receiver` is a ``http.server.ThreadingHTTPServer``: every POST is recorded (headers,
body, arrival time) and answered with the next status of :attr:`Receiver.statuses` (a
script: ``[500, 500]`` fails twice, then ``default_status``). With ``hang=True`` it reads the
request and never answers until :meth:`Receiver.stop` (a receiver that hangs). Usable from a
blocking test and from a Trio test alike (it never touches the test's loop).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import http.server
import json
import ssl
import threading
import time
from typing import Any

import attrs


@attrs.frozen
class ReceivedCall:
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival

    def json(self) -> Any:
        return json.loads(self.body)

    def signature_verifies(self, secret: str) -> bool:
        """Check the call as a receiver would (docs/webhooks.md, "Verifying")."""
        timestamp = self.headers["dispatch-timestamp"]
        expected = hmac.new(
            secret.encode(), timestamp.encode() + b"." + self.body, hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(self.headers["dispatch-signature"], f"v1={expected}")


class Receiver:
    def __init__(
        self,
        *,
        statuses: list[int] | None = None,
        default_status: int = 200,
        hang: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: serve HTTPS with this server context (e.g. the ``pki`` fixture's)."""
        self.calls: list[ReceivedCall] = []
        self.acknowledged: list[ReceivedCall] = []  # the calls answered with a 2xx
        self.statuses: collections.deque[int] = collections.deque(statuses or [])
        self.default_status = default_status
        self.hang = hang
        self._release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    return  # the sender went away mid-body (killed): not a call, as for any server
                headers = {k.lower(): v for k, v in self.headers.items()}
                call = ReceivedCall(headers, body, time.monotonic())
                with receiver._lock:
                    receiver.calls.append(call)
                    status = (
                        receiver.statuses.popleft()
                        if receiver.statuses
                        else receiver.default_status
                    )
                    if status < 300 and not receiver.hang:
                        receiver.acknowledged.append(call)
                if receiver.hang:
                    receiver._release.wait()
                    return
                answer = b'{"ok": true}' if status < 300 else b"try later"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "http" if tls is None else "https"
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/hooks"

    def event_ids(self) -> set[str]:
        """The ``id`` of every call received (a duplicate counts once)."""
        return {call.json()["id"] for call in list(self.calls)}

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
