"""Peers for the ``ses`` relay tests: moto's SES in server mode, and a scripted SES front end.

- :func:`moto_ses`: ``moto_server`` run as a subprocess on 127.0.0.1 (a free port), stopped
  by its PID when the block ends. :class:`MotoSes` verifies sender identities through SESv2's
  ``CreateEmailIdentity`` (SES sends only from verified identities) and reads the messages
  moto kept back from ``/moto-api/data.json``.
- :func:`scripted_ses`: an HTTP server answering each ``SendEmail`` from a script (throttling,
  5xx, error codes as SES sends them: ``x-amzn-ErrorType`` and a JSON ``message``), else with a
  ``MessageId``. It checks each request's Signature Version 4 itself with botocore (the same
  canonical request over the body it received), so a body changed after signing is refused
  with 403 ``SignatureDoesNotMatch``, as SES does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import free_port

REGION = "eu-west-1"
KEY_ID = "AKIDDISPATCHTEST"
SECRET = "dispatch-test-secret"


CREDENTIALS = Credentials(KEY_ID, SECRET)


def sign(url: str, body: bytes, credentials: Credentials = CREDENTIALS) -> dict[str, str]:
    """Headers of a SESv2 JSON call to ``url`` signed by botocore (for the tests' own calls)."""
    request = AWSRequest("POST", url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(credentials, "ses", REGION).add_auth(request)
    return {k: str(v) for k, v in request.headers.items()}


@attrs.define
class MotoSes:
    base_url: str

    def verify(self, identity: str) -> None:
        """Verify ``identity`` (an address or a domain) for sending, as SES requires."""
        url = f"{self.base_url}/v2/email/identities"
        body = json.dumps({"EmailIdentity": identity}).encode()
        response = httpx.post(url, content=body, headers=sign(url, body))
        assert response.status_code == 200, response.text

    def sent(self) -> list[dict[str, Any]]:
        """The raw messages moto's SES kept: ``id``, ``source``, ``destinations``,
        ``raw_data`` (moto keeps the bytes decoded as UTF-8)."""
        data = httpx.get(f"{self.base_url}/moto-api/data.json").json()
        return list(data.get("ses", {}).get("RawMessage", []))

    def reset(self) -> None:
        httpx.post(f"{self.base_url}/moto-api/reset").raise_for_status()


@contextmanager
def moto_ses() -> Iterator[MotoSes]:
    """moto's server on 127.0.0.1, ready when it answers; stopped by PID at the end."""
    port = free_port()
    server = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peer = MotoSes(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{peer.base_url}/moto-api/data.json", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                assert process.poll() is None, "moto_server ended before it answered"
                assert time.monotonic() < deadline, "moto_server did not answer within 60 s"
                time.sleep(0.1)
        yield peer
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- a scripted SES front end ------------------------------------------------------------------


@attrs.define
class Received:
    payload: dict[str, Any]
    headers: dict[str, str]


@attrs.define
class ScriptedSes:
    credentials: Credentials
    script: list[tuple[int, dict[str, str], bytes]] = attrs.Factory(list)
    received: list[Received] = attrs.Factory(list)
    lock: threading.Lock = attrs.Factory(threading.Lock)
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error(self, status: int, code: str, message: str, **headers: str) -> None:
        """Script one error answer, shaped as SESv2's restJson errors are."""
        body = json.dumps({"message": message}).encode()
        answer = {"Content-Type": "application/json", "x-amzn-ErrorType": code, **headers}
        self.script.append((status, answer, body))

    def signature_is_good(self, path: str, headers: dict[str, str], body: bytes) -> bool:
        """Recompute the request's SigV4 signature with botocore over the received body."""
        authorization = headers.get("Authorization", "")
        if not authorization.startswith("AWS4-HMAC-SHA256 "):
            return False
        fields = dict(p.strip().split("=", 1) for p in authorization[17:].split(","))
        signed = fields["SignedHeaders"].split(";")
        request = AWSRequest(
            "POST",
            f"{self.base_url}{path}",
            data=body,
            headers={k: v for k, v in headers.items() if k.lower() in signed},
        )
        request.context["timestamp"] = headers.get("X-Amz-Date", "")
        auth = SigV4Auth(self.credentials, "ses", REGION)
        expected = auth.signature(
            auth.string_to_sign(request, auth.canonical_request(request)), request
        )
        scope = fields["Credential"].split("/", 1)[1]
        return fields["Signature"] == expected and scope.endswith(f"/{REGION}/ses/aws4_request")


def _handler(peer: ScriptedSes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None

        def answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = dict(self.headers.items())
            json_type = {"Content-Type": "application/json"}
            if self.path != "/v2/email/outbound-emails":
                self.answer(404, json_type, b'{"message": "no such operation"}')
                return
            if not peer.signature_is_good(self.path, headers, body):
                error = {**json_type, "x-amzn-ErrorType": "SignatureDoesNotMatch"}
                self.answer(403, error, b'{"message": "The request signature does not match"}')
                return
            with peer.lock:
                peer.received.append(Received(json.loads(body), headers))
                scripted = peer.script.pop(0) if peer.script else None
            if scripted is not None:
                self.answer(*scripted)
                return
            answer = json.dumps({"MessageId": f"0100-{uuid.uuid4().hex}"}).encode()
            self.answer(200, json_type, answer)

    return Handler


@contextmanager
def scripted_ses(
    key_id: str = KEY_ID, secret: str = SECRET, token: str | None = None
) -> Iterator[ScriptedSes]:
    """A scripted SES front end on 127.0.0.1 that knows these credentials."""
    peer = ScriptedSes(Credentials(key_id, secret, token))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(peer))
    server.daemon_threads = True
    peer.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="ses-peer", daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
