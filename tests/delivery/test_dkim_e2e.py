"""DKIM signing end to end: smtplib → Dispatch → an smtp or mx relay → a real SMTP sink, and
the signature checked with dkimpy against the key record served by a loopback DNS server.

Also: the bytes after the signature are what the client submitted (with Dispatch's own
``Received:`` header in front), the counters move in /debug/vars and /metrics, a relay with
``dkim_sign = false`` and a domain without a key send unsigned, a local copy is unsigned, and
inbound verification counts what it finds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatch.security.dkim_keys import Algorithm, generate_key
from tests.conftest import free_port
from tests.delivery.harness import running_dispatch
from tests.relays.peers import DnsServer
from tests.support.config import base_config, smtp_relay
from tests.support.sink import StartSink
from tests.support.waiting import wait_until_async

# An 8-bit body (UTF-8 as it is, no transfer encoding), a dot-leading line, a trailing space.
MESSAGE = (
    "From: App <app@example.com>\r\n"
    "To: someone@example.org\r\n"
    "Subject: Grüße\r\n"
    "Message-ID: <dkim-test@example.com>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Grüße aus Köln — ça va?\r\n"
    ".a line that starts with a dot\r\n"
    "trailing space \r\n"
).encode()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer()
    yield server
    server.stop()


def publish(dns_server: DnsServer, name: str, value: str) -> None:
    """The record as a zone file writes it: 255-octet strings (an RSA key needs two)."""
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
    dns_server.add(name, "TXT", " ".join(f'"{chunk}"' for chunk in chunks))


def txt_from(dns_server: DnsServer) -> Callable[..., bytes | None]:
    """dkimpy's ``dnsfunc``, asking only the loopback DNS server."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = dns_server.port

    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)

    return get_txt


def split_signature(content: bytes) -> tuple[bytes, bytes]:
    """The leading ``DKIM-Signature:`` field (with its folded lines) and the rest."""
    assert content.startswith(b"DKIM-Signature: "), content[:80]
    end = 0
    while True:
        end = content.index(b"\r\n", end) + 2
        if content[end : end + 1] not in (b" ", b"\t"):
            return content[:end], content[end:]


def strip_received(rest: bytes) -> bytes:
    """The message after Dispatch's ``Received:`` field (folded lines included)."""
    assert rest.startswith(b"Received: from "), rest[:80]
    end = 0
    while True:
        end = rest.index(b"\r\n", end) + 2
        if rest[end : end + 1] not in (b" ", b"\t"):
            return rest[end:]


def make_key(
    root: Path, dns_server: DnsServer, algorithm: Algorithm, domain: str
) -> dict[str, str]:
    """A key made as `dispatch dkim generate` makes it, published on the DNS server; the
    ``[[dkim]]`` table for it."""
    made = generate_key(domain, f"sel-{algorithm}", algorithm, root / "keys" / f"{domain}.key")
    publish(dns_server, made.key.record_name, made.key.public_record)
    return {
        "domain": domain,
        "selector": f"sel-{algorithm}",
        "private_key_file": str(made.path),
    }


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")


async def figures(port: int) -> tuple[dict[str, Any], str]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        variables = (await client.get("/debug/vars")).json()
        metrics = (await client.get("/metrics")).text
    return variables, metrics


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
async def test_smtp_relay_signs_and_the_rest_arrives_byte_for_byte(
    tmp_path: Path, start_sink: StartSink, dns_server: DnsServer, algorithm: Algorithm
) -> None:
    sink = start_sink()
    monitoring = free_port()
    config = base_config(
        tmp_path,
        relays=[smtp_relay("upstream", sink.port)],
        dkim=[make_key(tmp_path, dns_server, algorithm, "example.com")],
        monitoring={"address": f"127.0.0.1:{monitoring}"},
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        await dispatch.submit("bounce@example.com", ["someone@example.org"], MESSAGE)
        await wait_until_async(lambda: len(sink.messages) == 1)
        variables, metrics = await figures(monitoring)
    content = sink.messages[0].content
    signature, rest = split_signature(content)
    assert f"a={algorithm}-sha256;".encode() in signature
    assert b"d=example.com;" in signature
    assert f"s=sel-{algorithm};".encode() in signature
    assert b"c=relaxed/simple;" in signature
    # Everything after the signature is Dispatch's Received: field, then the submission.
    assert strip_received(rest) == MESSAGE
    assert dkim.verify(content, dnsfunc=txt_from(dns_server))
    # A changed byte in the 8-bit body breaks it: the check above can fail.
    assert not dkim.verify(content.replace("Köln".encode(), b"Koln"), dnsfunc=txt_from(dns_server))
    assert variables["dispatch/smtpIn/dkimSigned"] == 1
    assert variables["dispatch/smtpIn/dkimSignErrors"] == 0
    assert metric(metrics, "dispatch_dkim_signed_total") == 1
    assert metric(metrics, "dispatch_dkim_sign_errors_total") == 0


async def test_mx_relay_signs_once_for_several_domains(
    tmp_path: Path, start_sink: StartSink, dns_server: DnsServer
) -> None:
    sink = start_sink()
    for domain in ("one.test", "two.test"):
        dns_server.add(domain, "MX", f"10 mx.{domain}.")
        dns_server.add(f"mx.{domain}", "A", "127.0.0.1")
    relay = {
        "name": "direct",
        "kind": "mx",
        "port": sink.port,
        "nameservers": ["127.0.0.1"],
        "nameserver_port": dns_server.port,
        "timeout_seconds": 5,
    }
    config = base_config(
        tmp_path,
        relays=[relay],
        dkim=[make_key(tmp_path, dns_server, "ed25519", "example.com")],
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        await dispatch.submit("bounce@example.com", ["a@one.test", "b@two.test"], MESSAGE)
        await wait_until_async(lambda: len(sink.messages) == 2)
        assert dispatch.parts.stats.dkim_signed.value == 1  # one signature for both domains
    first, second = (m.content for m in sink.messages)
    assert first == second
    assert dkim.verify(first, dnsfunc=txt_from(dns_server))
    assert strip_received(split_signature(first)[1]) == MESSAGE


async def test_a_parent_domain_key_signs_a_subdomain_and_the_envelope_is_the_fallback(
    tmp_path: Path, start_sink: StartSink, dns_server: DnsServer
) -> None:
    sink = start_sink()
    config = base_config(
        tmp_path,
        relays=[smtp_relay("upstream", sink.port)],
        dkim=[
            make_key(tmp_path, dns_server, "rsa", "example.com"),
            make_key(tmp_path, dns_server, "ed25519", "envelope.test"),
        ],
    )
    from_subdomain = MESSAGE.replace(b"app@example.com", b"app@mail.example.com")
    no_key = MESSAGE.replace(b"app@example.com", b"app@elsewhere.test")
    async with running_dispatch(tmp_path, config) as dispatch:
        await dispatch.submit("b@example.com", ["x@example.org"], from_subdomain)
        await dispatch.submit("b@envelope.test", ["x@example.org"], no_key)
        await dispatch.submit("b@nokey.test", ["x@example.org"], no_key)
        await wait_until_async(lambda: len(sink.messages) == 3)
        assert dispatch.parts.stats.dkim_signed.value == 2
    by_envelope = {m.mail_from: m.content for m in sink.messages}
    parent = by_envelope["b@example.com"]
    assert b"d=example.com;" in split_signature(parent)[0]
    assert dkim.verify(parent, dnsfunc=txt_from(dns_server))
    envelope = by_envelope["b@envelope.test"]
    assert b"d=envelope.test;" in split_signature(envelope)[0]
    assert dkim.verify(envelope, dnsfunc=txt_from(dns_server))
    unsigned = by_envelope["b@nokey.test"]
    assert unsigned.startswith(b"Received: from ")
    assert strip_received(unsigned) == no_key


async def test_dkim_sign_false_and_the_local_relay_send_unsigned(
    tmp_path: Path, start_sink: StartSink, dns_server: DnsServer
) -> None:
    sink = start_sink()
    config = base_config(
        tmp_path,
        relays=[
            smtp_relay("plain", sink.port, dkim_sign=False),
            {"name": "inbox", "kind": "local"},
        ],
        routes=[{"recipient_domain": "inbox.test", "relay": "inbox"}],
        default_relay="plain",
        dkim=[make_key(tmp_path, dns_server, "rsa", "example.com")],
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        await dispatch.submit("b@example.com", ["x@example.org"], MESSAGE)
        captured_id = await dispatch.submit("b@example.com", ["x@inbox.test"], MESSAGE)
        await wait_until_async(lambda: len(sink.messages) == 1)
        await wait_until_async(lambda: dispatch.parts.spool.counts().total == 0)
        assert dispatch.parts.stats.dkim_signed.value == 0
    assert strip_received(sink.messages[0].content) == MESSAGE
    copy = (tmp_path / "spool" / "captured" / f"{captured_id}.eml").read_bytes()
    assert b"DKIM-Signature" not in copy


async def test_a_message_dkimpy_cannot_sign_goes_unsigned_and_is_counted(
    tmp_path: Path, start_sink: StartSink, dns_server: DnsServer
) -> None:
    sink = start_sink()
    config = base_config(
        tmp_path,
        relays=[smtp_relay("upstream", sink.port)],
        dkim=[make_key(tmp_path, dns_server, "rsa", "example.com")],
    )
    # No From: field at all (RFC 6376 §5.4: From must be signed), keyed by the envelope.
    headless = b"Subject: no from\r\n\r\nbody\r\n"
    async with running_dispatch(tmp_path, config) as dispatch:
        await dispatch.submit("b@example.com", ["x@example.org"], headless)
        await wait_until_async(lambda: len(sink.messages) == 1)
        assert dispatch.parts.stats.dkim_sign_errors.value == 1
        assert dispatch.parts.stats.dkim_signed.value == 0
    assert strip_received(sink.messages[0].content) == headless


async def test_retries_and_a_failover_relay_reuse_the_first_signature(
    tmp_path: Path, start_sink: StartSink, dns_server: DnsServer
) -> None:
    sink = start_sink()
    sink.handler.fail_data = 1  # the first attempt that reaches it gets 451 after the data
    relays = [smtp_relay("down", free_port()), smtp_relay("sink", sink.port)]
    config = base_config(
        tmp_path,
        relays=relays,
        routes=[{"recipient_domain": "*", "relay": ["down", "sink"]}],
        default_relay="sink",
        spool={"retry_delays_seconds": [0.2]},
        dkim=[make_key(tmp_path, dns_server, "rsa", "example.com")],
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        message_id = await dispatch.submit("b@example.com", ["x@example.org"], MESSAGE)
        await wait_until_async(lambda: len(sink.messages) == 1)
        await wait_until_async(lambda: dispatch.parts.spool.counts().total == 0)
        events = [e.event for e in await dispatch.history(message_id)]
        assert dispatch.parts.stats.dkim_signed.value == 1  # two attempts, two relays
    assert events == ["received", "retried", "delivered"]
    content = sink.messages[0].content
    assert dkim.verify(content, dnsfunc=txt_from(dns_server))
    assert strip_received(split_signature(content)[1]) == MESSAGE
