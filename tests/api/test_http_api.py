"""The HTTP ingestion API end to end: httpx → Dispatch → spool → relays (SPEC §4)."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from dispatch.security.api_keys import create_api_key
from tests.conftest import free_port
from tests.delivery.harness import Running, running_dispatch
from tests.support.config import base_config
from tests.support.sink import StartSink
from tests.support.waiting import wait_until_async


@asynccontextmanager
async def api(
    tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[Running, httpx.AsyncClient, str]]:
    async with running_dispatch(tmp_path, base_config(tmp_path, **overrides)) as dispatch:
        _, key = await create_api_key(dispatch.parts.store.api_keys, "tests")
        port = dispatch.parts.settings.current.api.port
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=20,
            headers={"Authorization": f"Bearer {key}"},
        ) as client:
            yield dispatch, client, key


def captured(
    dispatch: Running, message_id: str
) -> tuple[email.message.EmailMessage, dict[str, Any]]:
    folder = dispatch.root / "spool" / "captured"
    raw = (folder / f"{message_id}.eml").read_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed, json.loads((folder / f"{message_id}.json").read_bytes())


async def delivered(dispatch: Running, message_id: str) -> None:
    await wait_until_async(
        lambda: (
            (dispatch.root / "spool" / "captured" / f"{message_id}.json").exists()
            and dispatch.parts.spool.counts().total == 0
        )
    )


async def test_json_send_is_queued_then_delivered_with_bcc_only_in_the_envelope(
    tmp_path: Path,
) -> None:
    async with api(tmp_path) as (dispatch, client, key):
        response = await client.post(
            "/api/v1/messages",
            json={
                "from": "Ann Example <ann@example.com>",
                "to": "bob@example.org, carol@example.org",
                "cc": ["dave@example.net"],
                "bcc": ["hidden@example.net"],
                "subject": "Grüße aus Köln",
                "text": "plain body",
                "html": "<p>html body</p>",
                "headers": {"Reply-To": "replies@example.com", "X-Campaign": "autumn"},
                "tags": ["welcome", "autumn"],
            },
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["message"] == "Queued. Thank you."
        message_id = body["id"]
        await delivered(dispatch, message_id)
        status = (await client.get(f"/api/v1/messages/{message_id}")).json()
        listing = (await client.get("/api/v1/messages?limit=5")).json()
    message, envelope = captured(dispatch, message_id)
    assert envelope["recipients"] == [
        "bob@example.org",
        "carol@example.org",
        "dave@example.net",
        "hidden@example.net",
    ]
    assert envelope["source"] == "api"
    assert envelope["auth_identity"] == key[:17]
    assert envelope["tags"] == ["welcome", "autumn"]
    assert "Bcc" not in message
    assert (
        b"hidden@example.net"
        not in (dispatch.root / "spool" / "captured" / f"{message_id}.eml").read_bytes()
    )
    assert message["Subject"] == "Grüße aus Köln"
    assert message["Reply-To"] == "replies@example.com"
    assert message["X-Campaign"] == "autumn"
    assert message["Message-ID"]
    assert message["Date"]
    assert message.get_content_type() == "multipart/alternative"
    parts = {part.get_content_type(): part.get_content() for part in message.iter_parts()}
    assert parts["text/plain"].strip() == "plain body"
    assert parts["text/html"].strip() == "<p>html body</p>"
    assert status["status"] == "delivered"
    assert status["relay"] == "local"
    assert set(status["recipients"]) == set(envelope["recipients"])
    assert [item["id"] for item in listing["items"]] == [message_id]


async def test_multipart_send_with_two_attachments(tmp_path: Path) -> None:
    pdf = b"%PDF-1.4 not really a pdf \x00\xff" * 10
    async with api(tmp_path) as (dispatch, client, _):
        response = await client.post(
            "/api/v1/messages",
            data={
                "from": "app@example.com",
                "to": ["a@example.org", "b@example.org"],
                "bcc": "c@example.org",
                "subject": "files",
                "text": "see attached",
                "h:X-Order": "42",
                "o:tag": ["invoice", "eu"],
            },
            files=[
                ("attachment", ("invoice.pdf", pdf, "application/pdf")),
                ("attachment", ("notes-é.txt", b"hello\n", "text/plain")),
            ],
        )
        assert response.status_code == 202, response.text
        message_id = response.json()["id"]
        await delivered(dispatch, message_id)
    message, envelope = captured(dispatch, message_id)
    assert envelope["recipients"] == ["a@example.org", "b@example.org", "c@example.org"]
    assert envelope["tags"] == ["invoice", "eu"]
    assert message["X-Order"] == "42"
    assert message.get_content_type() == "multipart/mixed"
    attachments = {a.get_filename(): a for a in message.iter_attachments()}
    assert attachments["invoice.pdf"].get_content_type() == "application/pdf"
    assert attachments["invoice.pdf"].get_content() == pdf
    assert attachments["notes-é.txt"].get_content().replace("\r\n", "\n") == "hello\n"


def send_chunked(port: int, key: str) -> bytes:
    """A body without Content-Length that keeps coming: the 413 must arrive mid-upload."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nAuthorization: Bearer " + key.encode() + b"\r\n\r\n"
        )
        try:
            for _ in range(10_000):  # up to 10 MB offered; the limit is 2,000 bytes
                sock.sendall(b"3e8\r\n" + b"z" * 1000 + b"\r\n")
        except OSError:
            pass  # the server answered and closed while we were still sending
        return sock.recv(4096)


async def test_every_error_status(tmp_path: Path) -> None:
    overrides = {"api": {"max_message_bytes": 2000, "allowed_cidrs": ["127.0.0.1/32"]}}
    async with api(tmp_path, **overrides) as (dispatch, client, key):
        invalid = await client.post(
            "/api/v1/messages",
            json={
                "from": "not an address",
                "to": ["ok@example.org", "bad"],
                "subject": "a\r\nBcc: x",
            },
        )
        anonymous = await client.get("/api/v1/messages", headers={"Authorization": ""})
        wrong = await client.get(
            "/api/v1/messages", headers={"Authorization": f"Bearer {key[:-4]}AAAA"}
        )
        other = await create_api_key(dispatch.parts.store.api_keys, "revoked soon")
        await dispatch.parts.store.api_keys.revoke(other[0].id)
        revoked = await client.get(
            "/api/v1/messages", headers={"Authorization": f"Bearer {other[1]}"}
        )
        unsupported = await client.post(
            "/api/v1/messages", content=b"hello", headers={"Content-Type": "text/plain"}
        )
        template = {"from": "a@example.com", "to": "b@example.org", "text": ""}
        padding = 2000 - len(json.dumps(template).encode())
        exact = json.dumps({**template, "text": "x" * padding}).encode()
        assert len(exact) == 2000
        at_limit = await client.post(
            "/api/v1/messages", content=exact, headers={"Content-Type": "application/json"}
        )
        over = exact.replace(b'"text": "', b'"text": "y', 1)
        one_over = await client.post(
            "/api/v1/messages", content=over, headers={"Content-Type": "application/json"}
        )
        api_port = dispatch.parts.settings.current.api.port
        chunked = await trio.to_thread.run_sync(send_chunked, api_port, key)
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(transport=transport, timeout=10) as outsider:
            forbidden = await outsider.get(f"http://127.0.0.1:{api_port}/api/v1/messages")
        health = await client.get("/health")
        metrics = await client.get("/metrics")
    assert invalid.status_code == 400
    problems = {p["field"] for p in invalid.json()["detail"]}
    assert {"from", "to[1]", "subject"} <= problems
    for response in (anonymous, wrong, revoked):
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
    assert unsupported.status_code == 415
    assert at_limit.status_code in (202, 413)  # the body fits; the composed message may not
    assert one_over.status_code == 413
    assert chunked.startswith(b"HTTP/1.1 413")
    assert "api.max_message_bytes" in one_over.json()["detail"]
    assert forbidden.status_code == 403
    assert health.status_code == 404
    assert metrics.status_code == 404
    assert dispatch.parts.stats.api_denied["allowlist"] == 1


async def test_the_101st_request_in_a_minute_is_refused(tmp_path: Path) -> None:
    async with api(tmp_path) as (_, client, _key):
        codes = [(await client.get("/api/v1/messages?limit=1")).status_code for _ in range(100)]
        refused = await client.get("/api/v1/messages?limit=1")
    assert codes == [200] * 100
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


async def test_status_follows_a_failing_message_and_other_keys_see_nothing(
    tmp_path: Path, start_sink: StartSink
) -> None:
    sink = start_sink()
    relays = [{"name": "s", "kind": "smtp", "host": "127.0.0.1", "port": sink.port, "tls": "none"}]
    async with api(tmp_path, relays=relays, spool={"max_retries": 0}) as (dispatch, client, _):
        response = await client.post(
            "/api/v1/messages",
            json={"from": "a@example.com", "to": "reject-me@example.org", "text": "no"},
        )
        message_id = response.json()["id"]
        first = (await client.get(f"/api/v1/messages/{message_id}")).json()["status"]
        await wait_until_async(lambda: dispatch.parts.spool.counts().failed == 1)
        failed = (await client.get(f"/api/v1/messages/{message_id}")).json()
        _, other_key = await create_api_key(dispatch.parts.store.api_keys, "other")
        hidden = await client.get(
            f"/api/v1/messages/{message_id}", headers={"Authorization": f"Bearer {other_key}"}
        )
        other_list = await client.get(
            "/api/v1/messages", headers={"Authorization": f"Bearer {other_key}"}
        )
    assert first in ("queued", "processing", "failed")
    assert failed["status"] == "failed"
    assert failed["attempts"] == 1
    assert failed["recipients"]["reject-me@example.org"]["status"] == "failed"
    assert failed["recipients"]["reject-me@example.org"]["response"].startswith("550")
    assert hidden.status_code == 404
    assert other_list.json() == {"items": []}


async def test_openapi_document_is_served_and_kept_in_docs(tmp_path: Path) -> None:
    async with api(tmp_path) as (_, client, _key):
        served = (await client.get("/api/v1/openapi.json")).json()
    kept = json.loads((Path(__file__).parents[2] / "docs" / "openapi.json").read_text())
    assert served == kept
    assert set(served["paths"]) == {
        "/api/v1/messages",
        "/api/v1/messages/{id}",
        "/api/v1/openapi.json",
    }


async def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    async with api(tmp_path, api={"rate_limit_per_key": 100_000}) as (dispatch, _, key):
        port = dispatch.parts.settings.current.api.port
        result = await trio.run_process(
            [
                str(Path(sys.executable).with_name("st")),
                "run",
                f"http://127.0.0.1:{port}/api/v1/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "40",
                "--header",
                f"Authorization: Bearer {key}",
                "--workers",
                "1",
                "--generation-deterministic",
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=tmp_path,  # schemathesis keeps a cache in its working directory
        )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output[-4000:]
    assert "Tested: 3" in output  # every operation was exercised
    assert "Fuzzing" in output


async def test_https_port_when_tls_is_enabled(tmp_path: Path) -> None:
    tls_port = free_port()
    overrides = {"api": {"tls_enabled": True, "tls_port": tls_port}}
    async with api(tmp_path, **overrides) as (dispatch, plain, key):
        cert = dispatch.root / "data" / "tls" / "selfsigned-cert.pem"
        context = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{tls_port}",
            verify=context,
            timeout=10,
            headers={"Authorization": f"Bearer {key}"},
        ) as secure:
            over_tls = await secure.post(
                "/api/v1/messages",
                json={"from": "a@example.com", "to": "b@example.org", "text": "over TLS"},
            )
        over_plain = await plain.get("/api/v1/messages")
    assert over_tls.status_code == 202
    assert over_plain.status_code == 200  # api.http_enabled stays on beside it
