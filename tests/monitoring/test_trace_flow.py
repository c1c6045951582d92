"""Traces end to end: real traffic through Dispatch, then the /debug/traces pages over HTTP.

One in-process Dispatch (the real composition root) with its monitoring server, an upstream
sink (aiosmtpd, STARTTLS with a trustme certificate, AUTH) behind the ``smtp`` relay. Traffic:
an smtplib session that upgrades with STARTTLS (sending SNI), authenticates and queues two
messages (one the sink takes, one it refuses with 550), one implicit-TLS session, and one API
request with httpx. Then every page is fetched over HTTP and read as HTML: the dialogue lines
with their arguments and reply texts, the TLS facts, no AUTH payload or password anywhere, the
links followed from the session to the message, its attempt and the relay's dialogue with the
sink (and from the API request to its message), the permanent failure in the errors rings, the
histograms' counts, and a 404 titled for traces for an unknown id.
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import pytest
import trio

from dispatch.security.api_keys import create_api_key
from dispatch.security.passwords import hash_password
from tests.conftest import free_port
from tests.delivery.harness import Running, running_dispatch
from tests.support.config import base_config, smtp_relay
from tests.support.sink import Pki, Sink, StartSink
from tests.support.waiting import wait_until_async

USER, PASSWORD = "alice", "alice-password-6b1f"
RELAY_USER, RELAY_PASSWORD = "relay-user", "relay-password-93c2"
SNI: Final = "mail.dispatch.test"
CLIENT_NAME: Final = "client.example.test"
BODY_MARKER: Final = "body-marker-never-traced"
MESSAGE: Final = f"From: alice@example.com\r\nSubject: traced\r\n\r\n{BODY_MARKER}\r\n".encode()


class _SniContext(ssl.SSLContext):
    """A client context that sends :data:`SNI` whatever host smtplib connected to (an IP
    address, for which no SNI would be sent)."""

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["server_hostname"] = SNI
        return super().wrap_socket(sock, *args, **kwargs)


def _insecure(context: ssl.SSLContext) -> ssl.SSLContext:
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # Dispatch's self-signed certificate
    return context


@attrs.frozen
class Traffic:
    delivered: str  # queue id of the message the sink took
    refused: str  # queue id of the one it refused permanently
    via_api: str  # queue id of the API request's message
    smtp_port: int  # the STARTTLS session's port
    tls_port: int  # the implicit-TLS session's


def _smtp_session(port: int) -> tuple[str, str]:
    """STARTTLS with SNI, AUTH PLAIN, two messages; their queue ids."""
    ids: list[str] = []
    with smtplib.SMTP("127.0.0.1", port, local_hostname=CLIENT_NAME, timeout=20) as client:
        client.starttls(context=_insecure(_SniContext(ssl.PROTOCOL_TLS_CLIENT)))
        client.login(USER, PASSWORD)
        for recipient in ("bob@example.org", "reject-me@example.org"):
            client.mail("alice@example.com", ["SIZE=100"])
            client.rcpt(recipient)
            code, text = client.data(MESSAGE)
            assert code == 250, (code, text)
            ids.append(text.split()[-1].decode())
    return ids[0], ids[1]


def _implicit_tls_session(port: int) -> None:
    context = _insecure(ssl.create_default_context())
    with smtplib.SMTP_SSL("127.0.0.1", port, context=context, timeout=20) as client:
        client.ehlo("implicit.example.test")


async def _send_traffic(dispatch: Running, sink: Sink, tls_port: int) -> Traffic:
    delivered, refused = await trio.to_thread.run_sync(_smtp_session, dispatch.smtp_port)
    await trio.to_thread.run_sync(_implicit_tls_session, tls_port)
    _, key = await create_api_key(dispatch.parts.store.api_keys, "traces")
    api_port = dispatch.parts.settings.current.api.port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=20) as api:
        response = await api.post(
            "/api/v1/messages",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "from": "api@example.com",
                "to": "carol@example.org",
                "subject": "via the API",
                "text": BODY_MARKER,
            },
        )
    assert response.status_code == 202, response.text
    via_api = response.json()["id"]
    await wait_until_async(lambda: len(sink.messages) == 2, within=30)
    await wait_until_async(lambda: dispatch.parts.spool.counts().failed == 1, within=30)
    return Traffic(delivered, refused, via_api, dispatch.smtp_port, tls_port)


@asynccontextmanager
async def traced_dispatch(
    tmp_path: Path, start_sink: StartSink, pki: Pki
) -> AsyncIterator[tuple[httpx.AsyncClient, Traffic, Sink]]:
    sink = start_sink(tls="starttls", users={RELAY_USER: RELAY_PASSWORD})
    monitoring, tls_port = free_port(), free_port()
    relay = smtp_relay(
        "upstream",
        sink.port,
        tls="starttls",
        ca_file=str(pki.ca_file),
        username=RELAY_USER,
        password=RELAY_PASSWORD,
    )
    config = base_config(
        tmp_path,
        listener={
            "tls_ports": [tls_port],
            "users": [{"username": USER, "password_hash": hash_password(PASSWORD)}],
        },
        monitoring={"address": f"127.0.0.1:{monitoring}"},
        relays=[relay],
        default_relay="upstream",
        bounces={"enabled": False},  # the refusal's DSN would be a fourth message to trace
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        traffic = await _send_traffic(dispatch, sink, tls_port)
        # Every delivery attempt has finished (not only settled in the spool).
        families = dispatch.parts.tracer.families
        await wait_until_async(lambda: families["delivery.attempt"].finished_total == 3)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{monitoring}/debug/", timeout=20
        ) as client:
            yield client, traffic, sink


# --- reading the pages ----------------------------------------------------------------------


class _Page(HTMLParser):
    """The title, the text, the links and the tables (caption, rows of cell texts)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.title = ""
        self.links: list[tuple[str, str]] = []  # (href, text)
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.text_parts: list[str] = []
        self._in: list[str] = []
        self._href: str | None = None
        self._link_text = ""
        self._caption = ""
        self._rows: list[list[str]] | None = None
        self.feed(html)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in.append(tag)
        if tag == "a":
            self._href, self._link_text = dict(attrs).get("href") or "", ""
        elif tag == "table":
            self._caption, self._rows = "", []
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag == "td" and self._rows:
            self._rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()
        if tag == "a" and self._href is not None:
            self.links.append((self._href, self._link_text))
            self._href = None
        elif tag == "table" and self._rows is not None:
            self.tables.append((self._caption, self._rows))
            self._rows = None

    def handle_data(self, data: str) -> None:
        self.text_parts.append(data)
        if "title" in self._in:
            self.title += data
        if self._href is not None:
            self._link_text += data
        if "caption" in self._in:
            self._caption += data
        elif "td" in self._in and self._rows and self._rows[-1]:
            self._rows[-1][-1] += data

    def trace_links(self, family: str) -> list[str]:
        """The ids of the linked traces of ``family``, in page order."""
        return [
            href.removeprefix("traces?id=")
            for href, text in self.links
            if href.startswith("traces?id=") and text.startswith(f"{family}: ")
        ]


async def _page(client: httpx.AsyncClient, path: str) -> _Page:
    response = await client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return _Page(response.text)


async def _listed(client: httpx.AsyncClient, family: str, show: str) -> list[tuple[str, str]]:
    """(id, row text) of every trace listed by ``traces?family=…&show=…``."""
    page = await _page(client, f"traces?family={family}&show={show}")
    rows = [row for caption, rows in page.tables if not caption for row in rows if len(row) == 5]
    return [(row[2], " ".join(row)) for row in rows]


async def _trace_with(client: httpx.AsyncClient, family: str, words: str) -> _Page:
    """The page of the one recent trace of ``family`` whose listing row contains ``words``."""
    found = [tid for tid, text in await _listed(client, family, "0") if words in text]
    assert len(found) == 1, (family, words, found)
    return await _page(client, f"traces?id={found[0]}")


# --- the tests --------------------------------------------------------------------------------


@pytest.fixture
async def traced(
    tmp_path: Path, start_sink: StartSink, pki: Pki
) -> AsyncIterator[tuple[httpx.AsyncClient, Traffic, Sink]]:
    async with traced_dispatch(tmp_path, start_sink, pki) as running:
        yield running


async def test_session_trace_shows_the_dialogue_tls_and_no_credentials(
    traced: tuple[httpx.AsyncClient, Traffic, Sink],
) -> None:
    client, traffic, _ = traced
    session = await _trace_with(client, "smtp.session", f"→ port {traffic.smtp_port}")
    text = session.text
    assert f"C: EHLO {CLIENT_NAME}" in text
    assert "250-PIPELINING" in text  # the EHLO reply, every line
    assert "C: STARTTLS" in text
    assert "S: 220 2.0.0 Ready to start TLS" in text
    assert re.search(rf"TLS established: TLSv1\.[23], \S+ \(\d+ bits\), SNI {SNI}", text)
    assert "C: AUTH PLAIN <redacted>" in text
    assert "S: 235 2.7.0 Authentication successful" in text
    assert f"authenticated as {USER}" in text
    assert "C: MAIL FROM:<alice@example.com> SIZE=100" in text
    assert "C: RCPT TO:<bob@example.org>" in text
    assert "C: RCPT TO:<reject-me@example.org>" in text
    assert "C: DATA" in text
    assert f"S: 250 2.0.0 Ok: queued as {traffic.delivered}" in text
    assert "C: QUIT" in text
    assert "closed after 2 message(s)" in text
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert plain not in text
    assert PASSWORD not in text
    assert BODY_MARKER not in text  # message data is never traced


async def test_implicit_tls_session_shows_the_handshake(
    traced: tuple[httpx.AsyncClient, Traffic, Sink],
) -> None:
    client, traffic, _ = traced
    session = await _trace_with(client, "smtp.session", f"→ port {traffic.tls_port}")
    assert f"to port {traffic.tls_port} (implicit TLS)" in session.text
    assert re.search(r"TLS established: TLSv1\.[23], \S+ \(\d+ bits\), no SNI", session.text)
    assert "C: EHLO implicit.example.test" in session.text


async def test_links_lead_from_the_session_to_the_relays_dialogue_with_the_upstream(
    traced: tuple[httpx.AsyncClient, Traffic, Sink],
) -> None:
    client, traffic, sink = traced
    session = await _trace_with(client, "smtp.session", f"→ port {traffic.smtp_port}")
    session_id = session.title.removeprefix("Trace ")
    messages = list(dict.fromkeys(session.trace_links("message")))
    assert len(messages) == 2  # in the order queued
    message = await _page(client, f"traces?id={messages[0]}")
    assert traffic.delivered in message.title or traffic.delivered in message.text
    assert session_id in message.trace_links("smtp.session")  # the parent, linked back
    assert "delivered to every recipient" in message.text

    [attempt_id] = dict.fromkeys(message.trace_links("delivery.attempt"))
    attempt = await _page(client, f"traces?id={attempt_id}")
    assert "upstream (default) delivered" in attempt.text
    [dialogue_id] = dict.fromkeys(attempt.trace_links("relay.dialogue"))
    dialogue = await _page(client, f"traces?id={dialogue_id}")
    text = dialogue.text
    assert f"connecting to 127.0.0.1:{sink.port}" in text
    assert "S: 220 sink.test" in text  # the upstream's greeting
    assert "C: STARTTLS" in text
    assert "TLS established: TLSv1." in text
    assert "certificate verified" in text
    assert "C: AUTH PLAIN <redacted>" in text
    assert "S: 235 2.7.0 Authentication successful" in text
    assert "C: MAIL FROM:<alice@example.com>" in text
    assert "C: RCPT TO:<bob@example.org>" in text
    assert "S: 250 2.0.0 Ok: queued as Q1" in text  # the upstream's own reply text
    assert RELAY_PASSWORD not in text
    assert base64.b64encode(f"\0{RELAY_USER}\0{RELAY_PASSWORD}".encode()).decode() not in text


async def test_the_api_request_links_to_the_message_it_queued(
    traced: tuple[httpx.AsyncClient, Traffic, Sink],
) -> None:
    client, traffic, _ = traced
    request = await _trace_with(client, "api.request", "POST /api/v1/messages from 127.0.0.1")
    assert f"202 queued as {traffic.via_api}" in request.text
    [message_id] = dict.fromkeys(request.trace_links("message"))
    message = await _page(client, f"traces?id={message_id}")
    assert traffic.via_api in message.text
    assert "carol@example.org" in message.text
    assert message.trace_links("delivery.attempt")


async def test_a_permanent_failure_lands_in_the_errors_rings(
    traced: tuple[httpx.AsyncClient, Traffic, Sink],
) -> None:
    client, traffic, _ = traced
    messages = await _listed(client, "message", "errors")
    assert [text for _, text in messages if traffic.refused in text]
    attempts = await _listed(client, "delivery.attempt", "errors")
    [(attempt_id, _)] = [(tid, text) for tid, text in attempts if traffic.refused in text]
    attempt = await _page(client, f"traces?id={attempt_id}")
    assert "permanent" in attempt.text
    assert "550 5.1.1 no such user" in attempt.text
    [dialogue_id] = dict.fromkeys(attempt.trace_links("relay.dialogue"))
    dialogue = await _page(client, f"traces?id={dialogue_id}")
    assert "S: 550 5.1.1 no such user" in dialogue.text  # the upstream's refusal
    assert dialogue_id in [tid for tid, _ in await _listed(client, "relay.dialogue", "errors")]
    for _, text in attempts:
        assert traffic.delivered not in text


async def test_histograms_count_every_finished_trace(
    traced: tuple[httpx.AsyncClient, Traffic, Sink],
) -> None:
    client, _, _ = traced
    overview = await _page(client, "traces")
    counts: dict[str, int] = {}
    for caption, rows in overview.tables:
        family, _, rest = caption.partition(": ")
        if "finished, mean" in rest:
            total = int(rest.split()[0])
            cells = [int(row[1]) for row in rows if len(row) == 5]
            assert len(cells) == 8  # one row per latency bucket
            assert sum(cells) == total, (caption, rows)
            counts[family] = total
    assert counts["delivery.attempt"] == 3
    assert counts["relay.dialogue"] == 3
    assert counts["smtp.session"] == 2
    assert counts["api.request"] == 1
    assert counts["message"] == 3  # all three left the spool: delivered or failed


async def test_an_unknown_trace_id_is_a_404_titled_for_traces(
    traced: tuple[httpx.AsyncClient, Traffic, Sink],
) -> None:
    client, _, _ = traced
    for unknown in ("ffffffff", "", "<script>"):
        response = await client.get("traces", params={"id": unknown})
        assert response.status_code == 404
        page = _Page(response.text)
        assert page.title == "Traces: no such trace"
        assert "Memory" not in page.title
        assert "<script>" not in response.text
