"""Scenario 5 (SMTP): the SMTP port under attack, while it must stay useful and never relay.

- Slowloris and a connection flood: every slot held by clients dripping one byte a second,
  plus a flood of connections beyond ``max_connections``; a legitimate sender must still get
  each message through within its own timeout.
- AUTH brute force, one guess after another and many guesses at once: the throttle holds,
  other addresses are not locked out, nothing is relayed without authentication.
- Hostile input: oversized lines and messages, every SMTP smuggling ending, STARTTLS command
  injection, HTTP requests: refused as SPEC §3 says, counted, nothing queued or relayed.
"""

from __future__ import annotations

import base64
import signal
import smtplib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from dispatch.security.passwords import hash_password
from tests.conftest import Daemon
from tests.support.config import Ports, base_config, smtp_relay, write_config
from tests.support.sink import Sink
from tests.support.waiting import wait_until
from tests.system.faults import (
    Ops,
    assert_spool_whole,
    metric,
    report,
    spool_busy,
    spool_ids,
    token_message,
)

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]
PASSWORD = "correct horse battery staple"


@attrs.define
class Setup:
    daemon: Daemon
    ports: Ports
    ops: Ops
    sink: Sink
    root: Path


@pytest.fixture
def launch(start_daemon: Start, tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    sinks: list[Sink] = []

    def launch(**listener: Any) -> Setup:
        sink = Sink(pipelining=False)
        sinks.append(sink)
        ports = Ports.pick()
        config = base_config(
            tmp_path,
            ports,
            listener=listener,
            default_relay="upstream",
            relays=[smtp_relay("upstream", sink.port)],
        )
        daemon = start_daemon(write_config(tmp_path / "dispatch.toml", config))
        daemon.wait_for("all components ready")
        return Setup(daemon, ports, Ops(ports.webui, tmp_path / "data"), sink, tmp_path)

    yield launch
    for sink in sinks:
        sink.stop()


def stop(setup: Setup) -> None:
    setup.daemon.signal(signal.SIGTERM)
    assert setup.daemon.wait_exit() == 0
    assert_spool_whole(setup.root / "spool")


class Raw:
    """A raw SMTP conversation over a plain socket, for what smtplib will not send."""

    def __init__(self, port: int, *, source: str = "127.0.0.1", timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout, (source, 0))
        self.received = b""
        self.banner = self.until(b"\r\n")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until(self, marker: bytes) -> bytes:
        while marker not in self.received:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.received)
            self.received += chunk
        head, _, self.received = self.received.partition(marker)
        return head + marker

    def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        data = self.received
        with self.sock:
            while chunk := self.sock.recv(65536):
                data += chunk
        self.received = b""
        return data

    def close(self) -> None:
        self.sock.close()


# --- slowloris and flood --------------------------------------------------------------------

MAX_CONNECTIONS = 20
COMMAND_TIMEOUT = 2.0
LEGIT_TIMEOUT = 15.0
LEGIT_MESSAGES = 10
FLOOD_THREADS = 2
REOPEN_AFTER = 3.0


@attrs.define
class Attack:
    stop: threading.Event = attrs.Factory(threading.Event)
    lock: threading.Lock = attrs.Factory(threading.Lock)
    counts: Counter[str] = attrs.Factory(Counter)
    lifetimes: list[float] = attrs.Factory(list)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1


def slowloris(port: int, attack: Attack) -> None:
    """Hold a connection, dripping one byte a second of a command that never ends.

    Like the slowloris tool, a connection the server drops is opened again on the next round
    (``REOPEN_AFTER``), so the attacker keeps taking the slots back.
    """
    while not attack.stop.is_set():
        try:
            sock = socket.create_connection(("127.0.0.1", port), 5)
        except OSError:
            continue
        with sock:
            try:
                if not sock.recv(1024).startswith(b"220"):
                    attack.count("slowloris refused")
                    attack.stop.wait(0.2)
                    continue
                attack.count("slowloris took a slot")
                opened = time.monotonic()
                sock.settimeout(1.0)
                for byte in b"EHLO " + b"x" * 500:
                    if attack.stop.is_set():
                        break
                    sock.sendall(bytes([byte]))
                    try:
                        if sock.recv(1024):  # the server's 421: it cut us off
                            break
                    except TimeoutError:
                        continue
                with attack.lock:
                    attack.lifetimes.append(time.monotonic() - opened)
            except OSError:
                pass
        attack.stop.wait(REOPEN_AFTER)


def flood(port: int, attack: Attack) -> None:
    """Open connections as fast as possible, read the banner, drop them."""
    while not attack.stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), 5) as sock:
                banner = sock.recv(1024)
        except OSError:
            attack.count("flood error")
            continue
        attack.count("flood 421" if banner.startswith(b"421") else "flood 220")


def legit_send(port: int, token: str) -> tuple[str, float, int]:
    """Send one message like a patient MTA: retry a refused connection until the deadline."""
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=LEGIT_TIMEOUT) as client:
                client.ehlo()
                client.mail("legit@example.com")
                client.rcpt("friend@example.org")
                code, text = client.data(token_message(token))
                assert code == 250, (code, text)
                return text.split()[-1].decode(), time.monotonic() - started, tries
        except (smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected):
            if time.monotonic() - started > LEGIT_TIMEOUT:
                raise
            time.sleep(0.2)


def test_slowloris_and_flood_leave_room_for_a_legitimate_sender(
    launch: Callable[..., Setup],
) -> None:
    setup = launch(max_connections=MAX_CONNECTIONS, connection_timeout_seconds=COMMAND_TIMEOUT)
    port = setup.ports.smtp
    attack = Attack()
    # Every slot held by a slow dripper, and a flood knocking on the full house.
    threads = [
        threading.Thread(target=slowloris, args=(port, attack)) for _ in range(MAX_CONNECTIONS)
    ]
    threads += [threading.Thread(target=flood, args=(port, attack)) for _ in range(FLOOD_THREADS)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: attack.counts["flood 421"] > 50, what="the slots to be taken")
        results = []
        for n in range(LEGIT_MESSAGES):  # spread over several rounds of the attack
            results.append(legit_send(port, f"legit-{n}"))
            time.sleep(0.6)
        health, _ = setup.ops.health()
    finally:
        attack.stop.set()
        for thread in threads:
            thread.join(timeout=10)
    wait_until(lambda: len(setup.sink.deliveries) == LEGIT_MESSAGES, what="legit deliveries")
    metrics = setup.ops.metrics()
    stop(setup)

    assert health == 200
    assert {d.token for d in setup.sink.deliveries} == {f"legit-{n}" for n in range(10)}
    latencies = [took for _, took, _ in results]
    assert max(latencies) < LEGIT_TIMEOUT
    # Every slow-drip connection was cut at the command timeout, not the session deadline.
    assert attack.lifetimes
    assert max(attack.lifetimes) < COMMAND_TIMEOUT + 1.5
    denied = metric(metrics, "dispatch_smtp_denied_connections_total", reason="max_connections")
    assert denied > 0
    report(
        "slowloris and flood",
        {
            "max_connections": MAX_CONNECTIONS,
            "attack": dict(attack.counts),
            "longest slowloris connection (s)": round(max(attack.lifetimes), 2),
            "legit messages": LEGIT_MESSAGES,
            "legit worst latency (s)": round(max(latencies), 2),
            "legit connection attempts": sum(tries for _, _, tries in results),
            "refused as max_connections (metric)": denied,
        },
    )


# --- AUTH brute force -----------------------------------------------------------------------


def auth_plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_auth_brute_force_is_throttled_and_relays_nothing(launch: Callable[..., Setup]) -> None:
    setup = launch(
        require_auth=True,
        allow_unsecure_auth=True,
        users=[{"username": "alice", "password_hash": hash_password(PASSWORD)}],
    )
    port = setup.ports.smtp
    codes: Counter[int] = Counter()

    def one_session(source: str, guesses: list[str]) -> list[int]:
        answers = []
        client = smtplib.SMTP(timeout=20)
        try:
            client.connect("127.0.0.1", port, source_address=(source, 0))
            client.ehlo()
            for guess in guesses:
                answers.append(client.docmd("AUTH PLAIN", auth_plain("alice", guess))[0])
            answers.append(client.docmd("MAIL FROM:<attacker@example.net>")[0])
        except smtplib.SMTPServerDisconnected:
            answers.append(0)  # closed on us
        finally:
            client.close()
        return answers

    # One guess after another from 127.0.0.3: three per session (the third error closes it).
    first = one_session("127.0.0.3", ["guess1", "guess2", "guess3"])
    second = one_session("127.0.0.3", ["guess4", "guess5", PASSWORD])
    assert first == [535, 535, 535, 421]  # "too many errors": closed
    assert second[:3] == [535, 535, 454], second  # the right password no longer even checked
    assert second[3] in (530, 0)  # nothing relayed without authentication

    # Thirty guesses at once from 127.0.0.4: the throttle still allows five.
    barrier = threading.Barrier(30)

    def parallel(n: int) -> None:
        client = smtplib.SMTP(timeout=30)
        try:
            client.connect("127.0.0.1", port, source_address=("127.0.0.4", 0))
            client.ehlo()
            barrier.wait()
            code = client.docmd("AUTH PLAIN", auth_plain("alice", f"parallel{n}"))[0]
            codes[code] += 1
        finally:
            client.close()

    threads = [threading.Thread(target=parallel, args=(n,)) for n in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert codes == Counter({535: 5, 454: 25}), codes

    # Other addresses are not locked out, and a real user relays.
    legit = smtplib.SMTP(timeout=20)
    legit.connect("127.0.0.1", port, source_address=("127.0.0.5", 0))
    legit.login("alice", PASSWORD)
    legit.sendmail("alice@example.com", ["friend@example.org"], token_message("alice-1"))
    legit.quit()
    wait_until(lambda: len(setup.sink.deliveries) == 1)
    metrics = setup.ops.metrics()
    stop(setup)
    assert [d.token for d in setup.sink.deliveries] == ["alice-1"]
    figures = {
        result: metric(metrics, "dispatch_smtp_auth_total", result=result)
        for result in ("success", "failure", "throttled")
    }
    assert figures == {"success": 1, "failure": 10, "throttled": 26}, figures
    report("auth brute force", {"parallel guesses": dict(codes), "metric": figures})


# --- hostile input --------------------------------------------------------------------------

ENVELOPE = b"EHLO evil.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
SMUGGLED = (
    b"MAIL FROM:<boss@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    b"Subject: smuggled\r\nX-Fault-Token: smuggled\r\n\r\nwire the money\r\n.\r\n"
)
SMUGGLING_ENDINGS = [
    b"\n.\n",
    b"\r\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\r.\r\n",
    b"\r\n.\r\r\n",
]
HTTP_LINES = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT example.org:25 HTTP/1.1\r\n\r\n",
    b"HEAD / HTTP/1.0\r\n\r\n",
    b"PUT /x HTTP/1.1\r\n\r\n",
]


def test_hostile_input_is_refused_and_nothing_is_relayed(launch: Callable[..., Setup]) -> None:
    setup = launch(max_message_bytes=100_000)
    port = setup.ports.smtp
    seen: dict[str, bytes] = {}

    # A command line far past 512 octets, then one of 10 MB without any line end.
    raw = Raw(port)
    raw.send(b"EHLO " + b"a" * 2000 + b"\r\nNOOP\r\n")
    seen["long command"] = raw.until(b"\r\n") + raw.until(b"\r\n")
    raw.close()
    raw = Raw(port)
    raw.send(b"X" * 10_000_000 + b"\r\nNOOP\r\n")
    seen["10 MB line"] = raw.until(b"\r\n") + raw.until(b"\r\n")
    raw.close()
    # SIZE too large at MAIL; a message too large while reading; a text line too long.
    raw = Raw(port)
    raw.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com> SIZE=200000\r\n")
    seen["SIZE"] = raw.until(b"\r\n552") + raw.until(b"\r\n")
    raw.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    raw.until(b"354")
    raw.until(b"\r\n")
    raw.send(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 150 + b".\r\n")
    seen["too big"] = raw.until(b"\r\n")
    raw.send(b"RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    raw.until(b"354")
    raw.until(b"\r\n")
    raw.send(b"Subject: wide\r\n\r\n" + b"w" * 5000 + b"\r\n.\r\n")
    seen["long text line"] = raw.until(b"\r\n")
    raw.close()

    for ending in SMUGGLING_ENDINGS:
        raw = Raw(port)
        raw.send(ENVELOPE)
        raw.until(b"354")
        raw.until(b"\r\n")
        raw.send(b"Subject: outer\r\n\r\nhello" + ending + SMUGGLED)
        seen[f"smuggling {ending!r}"] = raw.rest()
    raw = Raw(port)  # the same through BDAT
    body = b"Subject: outer\r\n\r\nhello\n.\n" + SMUGGLED
    raw.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n")
    raw.send(b"BDAT %d LAST\r\n" % len(body) + body)
    seen["smuggling BDAT"] = raw.rest()

    injections = {
        "same packet": b"EHLO c.example\r\nSTARTTLS\r\nMAIL FROM:<injected@example.com>\r\n",
        "after EHLO pipelined": b"EHLO c.example\r\nSTARTTLS\r\nRSET\r\nQUIT\r\n",
    }
    for name, data in injections.items():
        raw = Raw(port)
        raw.send(data)
        seen[f"STARTTLS injection, {name}"] = raw.rest()
    raw = Raw(port)  # plaintext sent after the 220, instead of a TLS ClientHello
    raw.send(b"EHLO c.example\r\nSTARTTLS\r\n")
    raw.until(b"Ready to start TLS\r\n")
    raw.send(b"MAIL FROM:<injected@example.com>\r\nRCPT TO:<b@example.org>\r\n")
    seen["STARTTLS injection, instead of a handshake"] = raw.rest()

    for request in HTTP_LINES:
        raw = Raw(port)
        raw.send(request)
        seen[f"HTTP {request.split()[0].decode()}"] = raw.rest()
    raw = Raw(port)
    raw.send(b"\x00\xff<script>\r\nEVIL\x1b[31m\r\nQUIT\r\n")
    seen["garbage verbs"] = raw.rest()

    # The port still works for an honest client afterwards.
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("a@example.com", ["b@example.org"], token_message("honest"))
    wait_until(lambda: spool_busy(setup.root / "spool") == 0)
    metrics = setup.ops.metrics()
    stop(setup)

    def starts(name: str, *prefixes: bytes) -> None:
        assert seen[name].startswith(prefixes), (name, seen[name][:300])

    starts("long command", b"500 5.5.6")
    assert seen["long command"].endswith(b"250 2.0.0 Ok\r\n")
    starts("10 MB line", b"500 5.5.6")
    assert seen["10 MB line"].endswith(b"250 2.0.0 Ok\r\n")
    starts("SIZE", b"250")
    assert b"552 5.3.4" in seen["SIZE"]
    starts("too big", b"552 5.3.4")
    starts("long text line", b"500 5.5.6")
    for ending in SMUGGLING_ENDINGS:
        starts(f"smuggling {ending!r}", b"521 5.5.2")
        assert b"250" not in seen[f"smuggling {ending!r}"]
    assert b"521 5.5.2" in seen["smuggling BDAT"]
    assert b"queued" not in seen["smuggling BDAT"]
    for name in injections:
        answers = seen[f"STARTTLS injection, {name}"]
        assert answers.endswith(b"220 2.0.0 Ready to start TLS\r\n"), (name, answers)
    assert seen["STARTTLS injection, instead of a handshake"] == b""
    for request in HTTP_LINES:
        starts(f"HTTP {request.split()[0].decode()}", b"502 5.5.1")
    assert b"421" in seen["garbage verbs"] or b"221" in seen["garbage verbs"]

    # Nothing but the honest message was queued or relayed.
    assert [d.token for d in setup.sink.deliveries] == ["honest"]
    assert setup.sink.unmarked == 0
    assert spool_ids(setup.root / "spool", "failed") == set()
    for verb in ("GET", "POST", "CONNECT", "HEAD", "PUT"):
        assert metric(metrics, "dispatch_smtp_wrong_protocol_total", verb=verb) == 1, verb
    labels = [line for line in metrics.splitlines() if line.startswith("dispatch_smtp_commands")]
    assert all(ch.isprintable() for line in labels for ch in line)
    assert not any("<" in line or "\\x" in line for line in labels), labels
    report("hostile input", {name: last_reply(answer) for name, answer in seen.items()})


def last_reply(answer: bytes) -> str:
    lines = answer.strip().splitlines()
    return lines[-1][:9].decode("ascii", "replace") if lines else "(closed, no reply)"
