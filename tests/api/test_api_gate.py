"""The API gate (issue 11, items 1 and 14): decisions from the headers, before the body.

Each test speaks raw HTTP/1.1 over a socket so that it controls how much of a body is sent:
a request declaring 10 MB but sending only a few bytes must still get its refusal at once
(the old ``BodyLimit`` waited for the whole body first), and the connection must end.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import trio

from tests.api.test_http_api import api
from tests.delivery.harness import Running
from tests.support.waiting import wait_until_async

DECLARED = 10_000_000
JSON_TYPE = "application/json"


def start_upload(
    port: int, *, source: str = "127.0.0.1", key: str | None, content_type: str = JSON_TYPE
) -> socket.socket:
    """Send the headers of a 10 MB POST and 100 bytes of its body; the open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(
        (
            f"POST /api/v1/messages HTTP/1.1\r\nHost: api.test\r\nContent-Type: {content_type}\r\n"
            f"{auth}Content-Length: {DECLARED}\r\n\r\n"
        ).encode()
        + b"{" * 100
    )
    return sock


def answer_and_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (10 s at most)."""
    received = b""
    with sock:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
    raise AssertionError(f"the connection stayed open after {received[:200]!r}")


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_files(dispatch: Running) -> list[str]:
    return sorted(p.name for p in (dispatch.root / "spool" / "tmp").glob("api-*.body"))


async def test_refusals_come_before_the_body_and_close_the_connection(tmp_path: Path) -> None:
    overrides = {"api": {"allowed_cidrs": ["127.0.0.1/32"], "max_message_bytes": 5_000_000}}
    async with api(tmp_path, **overrides) as (dispatch, _, key):
        port = dispatch.parts.settings.current.api.port
        wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBA")
        cases = {
            "outsider": {"source": "127.0.0.2", "key": key},
            "no key": {"key": None},
            "wrong key": {"key": wrong},
            "text/plain": {"key": key, "content_type": "text/plain"},
            "declared too large": {"key": key},
        }
        answers = {}
        for name, how in cases.items():
            sock = start_upload(port, **how)  # type: ignore[arg-type]
            answers[name] = await trio.to_thread.run_sync(answer_and_close, sock)
        leftovers = body_files(dispatch)
    expected = {
        "outsider": 403,
        "no key": 401,
        "wrong key": 401,
        "text/plain": 415,
        "declared too large": 413,  # 10 MB declared, 5 MB allowed
    }
    assert {name: status_of(a) for name, a in answers.items()} == expected
    for answer in answers.values():
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert b"\r\nconnection: close" in head, head
    assert leftovers == []  # no body of a refused request was ever written


async def test_an_admitted_body_streams_to_a_file_and_caps_answer_503(tmp_path: Path) -> None:
    overrides = {"api": {"max_concurrent_requests": 3, "max_concurrent_requests_per_ip": 2}}
    async with api(tmp_path, **overrides) as (dispatch, _, key):
        port = dispatch.parts.settings.current.api.port
        first = start_upload(port, key=key)
        second = start_upload(port, key=key)
        # Both are admitted and receiving their bodies into the spool's tmp/.
        await wait_until_async(lambda: len(body_files(dispatch)) == 2)
        same_address = start_upload(port, key=None)  # refused before its key is looked at
        third = start_upload(port, source="127.0.0.3", key=key)
        await wait_until_async(lambda: len(body_files(dispatch)) == 3)
        over_all = start_upload(port, source="127.0.0.4", key=key)
        per_ip = await trio.to_thread.run_sync(answer_and_close, same_address)
        total = await trio.to_thread.run_sync(answer_and_close, over_all)
        # The uploads in flight are cut off (the connection closes): their files go.
        for sock in (first, second, third):
            sock.close()
        await wait_until_async(lambda: body_files(dispatch) == [])
        after = start_upload(port, key=None)  # the slots are free again
        free_again = await trio.to_thread.run_sync(answer_and_close, after)
        busy = dict(dispatch.parts.stats.api_busy.values)
    assert status_of(per_ip) == 503
    assert b"max_concurrent_requests_per_ip" in per_ip
    assert b"\r\nretry-after: 1" in per_ip.lower()
    assert status_of(total) == 503
    assert b"api.max_concurrent_requests)" in total
    assert status_of(free_again) == 401
    assert busy == {"max_concurrent_requests_per_ip": 1, "max_concurrent_requests": 1}
    assert dispatch.parts.spool.counts().total == 0


async def test_junk_keys_from_an_address_do_not_lock_out_a_valid_key(tmp_path: Path) -> None:
    """After 5 junk keys from 127.0.0.1, a valid key from 127.0.0.1 still gets through: many
    clients may share one address (issue 11, item 2)."""
    async with api(tmp_path) as (_, client, _key):
        junk = [
            (await client.get("/api/v1/messages", headers={"Authorization": f"Bearer {bad}"}))
            for bad in ["dsp_live_nonsense"] * 6
        ]
        valid = await client.get("/api/v1/messages")
        still_junk = await client.get(
            "/api/v1/messages", headers={"Authorization": "Bearer dsp_live_nonsense"}
        )
    assert [r.status_code for r in junk][:5] == [401] * 5
    assert junk[-1].status_code == 429
    assert valid.status_code == 200
    assert still_junk.status_code == 429
    assert int(still_junk.headers["Retry-After"]) > 0
