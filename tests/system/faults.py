"""Shared machinery of the reliability and abuse suites (``test_reliability_*``, ``test_abuse_*``).

These suites attack a real ``python -m dispatch`` subprocess (the ``start_daemon`` fixture)
the way an outage or an attacker would, and count what went in and what came out:

- :class:`Senders`: threads pushing mail continuously through SMTP (smtplib) and the HTTP API
  (httpx); every message carries a unique ``X-Fault-Token`` header, and every acknowledgement
  (``250``/``202`` with its queue id) is kept in a ledger.
- :class:`PostfixSink` and :class:`HungServer`: upstreams that misbehave as no aiosmtpd
  handler can (the well-behaved one, which fails on demand, is ``tests.support.sink.Sink``).
- :class:`Ops`: ``/health`` and ``/metrics`` over HTTPS on the dashboard port, verified
  against the daemon's generated certificate.

``DISPATCH_RELIABILITY_LONG=1`` (set by ``nox -s reliability -- --long``) makes the suites
run longer variants: more kills, more messages, longer fuzzing.

Their configuration is ``tests.support.config.base_config`` plus what each scenario changes;
the API of a scenario that sends continuously is not rate-limited (:data:`UNLIMITED_API`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import random
import re
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import attrs
import httpx

from dispatch.spool import Envelope
from dispatch.spool.testing import envelope_ids, read_envelope
from tests.conftest import Daemon, free_port
from tests.support.config import Ports
from tests.support.sink import TOKEN_HEADER, token_of
from tests.support.waiting import wait_until

LONG: Final = os.environ.get("DISPATCH_RELIABILITY_LONG") == "1"
STATES: Final = ("incoming", "processing", "failed")
DISPATCH: Final = (sys.executable, "-m", "dispatch")


def report(name: str, figures: dict[str, Any]) -> None:
    """Print a scenario's figures; also append them to ``$DISPATCH_RELIABILITY_REPORT`` (JSON
    lines) when set, which is where docs/reliability.md takes its numbers from."""
    print(f"{name}: {json.dumps(figures)}")
    target = os.environ.get("DISPATCH_RELIABILITY_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as file:
            file.write(json.dumps({"scenario": name, **figures}) + "\n")


def log_so_far(daemon: Daemon) -> str:
    """Every log line the daemon wrote until now (``Daemon.lines`` only grows in wait_for)."""
    while True:
        try:
            line = daemon._new.get_nowait()
        except queue.Empty:
            break
        if line is None:
            daemon._new.put(None)  # keep the end marker for wait_exit
            break
        daemon.lines.append(line)
    return daemon.log


# --- configuration ----------------------------------------------------------------------------


# A scenario that sends continuously would otherwise meet the per-key limit (100 a minute)
# instead of the fault it is about.
UNLIMITED_API: Final = {"rate_limit_per_key": 1_000_000}


def create_api_key(config_path: Path) -> str:
    """``python -m dispatch api-key create --json`` before the daemon starts; the key."""
    done = subprocess.run(
        [
            *DISPATCH,
            "api-key",
            "create",
            "--name",
            "faults",
            "--json",
            "--config",
            str(config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = json.loads(done.stdout)["key"]
    assert isinstance(key, str)
    return key


# --- the spool on disk ------------------------------------------------------------------------


def spool_ids(spool: Path, state: str) -> set[str]:
    """Ids whose envelope (``.json`` or the ``.eml``'s attribute) is in ``state`` (a
    directory listing: tests only)."""
    return envelope_ids(spool / state)


def read_spooled(spool: Path, message_id: str, settle: float = 5.0) -> bytes:
    """The ``.eml`` of a message waiting in ``incoming/`` or claimed in ``processing/``.

    A running daemon moves a message between the two on every attempt and retry, so a look
    at one directory and then a read in the other can miss it; a message that is really gone
    stays missing for ``settle`` seconds.
    """
    deadline = time.monotonic() + settle
    while True:
        for state in ("incoming", "processing"):
            with contextlib.suppress(FileNotFoundError):
                return (spool / state / f"{message_id}.eml").read_bytes()
        if time.monotonic() > deadline:
            raise AssertionError(f"acknowledged but not on disk: {message_id}")
        time.sleep(0.01)


def spool_busy(spool: Path) -> int:
    return len(spool_ids(spool, "incoming")) + len(spool_ids(spool, "processing"))


def envelopes(spool: Path, state: str) -> dict[str, Envelope]:
    found: dict[str, Envelope] = {}
    for message_id in envelope_ids(spool / state):
        with contextlib.suppress(FileNotFoundError, AssertionError):  # moved meanwhile
            envelope = read_envelope(spool / state, message_id)
            found[envelope.id] = envelope
    return found


def spool_problems(spool: Path) -> list[str]:
    """What makes the spool not whole right now: files in tmp/, halves of a message."""
    problems = [
        f"half-written file in tmp/: {p.name}"
        for p in (spool / "tmp").iterdir()
        if not p.name.startswith(".health")
    ]
    for state in STATES:
        jsons = envelope_ids(spool / state)
        emls = {p.stem for p in (spool / state).glob("*.eml")}
        problems += [f"{state}/: envelope without body {i}" for i in sorted(jsons - emls)]
        problems += [f"{state}/: body without envelope {i}" for i in sorted(emls - jsons)]
    return problems


def assert_spool_whole(spool: Path, settle: float = 5.0) -> None:
    """Every message is whole in one state directory (a one-file ``.eml`` carrying its
    envelope, or a .json + .eml pair); tmp/ holds nothing.

    A running daemon moves a message with two renames (body, then envelope) and writes in
    tmp/ while it commits, so one look can catch a move half done. A real leftover stays:
    the spool must be whole at some look within ``settle`` seconds.
    """
    deadline = time.monotonic() + settle
    while problems := spool_problems(spool):
        if time.monotonic() > deadline:
            raise AssertionError("spool not whole: " + "; ".join(problems[:10]))
        time.sleep(0.05)


# --- HTTPS ops port -----------------------------------------------------------------------------


class Ops:
    """``/health`` and ``/metrics`` over HTTPS, trusting the daemon's self-signed certificate."""

    def __init__(self, port: int, data_dir: Path, *, source: str | None = None) -> None:
        self.port = port
        self.data_dir = data_dir
        self.source = source

    def client(self) -> httpx.Client:
        cert = self.data_dir / "tls" / "selfsigned-cert.pem"
        context = ssl.create_default_context(cafile=str(cert))
        transport = httpx.HTTPTransport(verify=context, local_address=self.source)
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.port}", transport=transport, timeout=10
        )

    def health(self) -> tuple[int, dict[str, Any]]:
        with self.client() as client:
            response = client.get("/health")
        return response.status_code, response.json()

    def metrics(self) -> str:
        with self.client() as client:
            response = client.get("/metrics")
        response.raise_for_status()
        return response.text


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text; 0 when the series is absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        base, _, rest = series.partition("{")
        if base != name:
            continue
        found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if found == wanted:
            return float(value)
    return 0.0


# --- the upstream -----------------------------------------------------------------------------


class PostfixSink:
    """Postfix's ``smtp-sink`` on a loopback port, misbehaving as its flags say (STACK.md);
    every transaction it completes is dumped to a file of :attr:`dump_dir`."""

    BINARY: Final = "/usr/sbin/smtp-sink"

    def __init__(self, dump_dir: Path, *flags: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.flags = flags
        self.dump_dir = dump_dir
        dump_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.BINARY, "-u", "root", "-d", f"{dump_dir}/%H%M%S.", *flags, self.address, "256"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._listening, within=10, what=f"smtp-sink {flags} listening")

    def _listening(self) -> bool:
        assert self.process.poll() is None, f"smtp-sink {self.flags} exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=10)

    def delivered(self) -> dict[str, list[str]]:
        """token -> recipients, one entry per recipient per transaction."""
        found: dict[str, list[str]] = {}
        for path in self.dump_dir.iterdir():
            data = path.read_bytes()
            token = token_of(data)
            if token is None:
                continue
            rcpts = re.findall(rb"^X-Rcpt-Args: <([^>]*)>", data, re.MULTILINE)
            found.setdefault(token, []).extend(r.decode() for r in rcpts)
        return found


class HungServer:
    """A port that accepts TCP connections (the kernel completes the handshake into the
    backlog) and never says a word: an upstream that hangs before its greeting."""

    def __init__(self, port: int | None = None) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", port or 0))
        self.socket.listen(128)
        self.port: int = self.socket.getsockname()[1]

    def stop(self) -> None:
        self.socket.close()


# --- the senders ------------------------------------------------------------------------------


@attrs.frozen
class Ack:
    token: str
    message_id: str
    source: str
    recipients: tuple[str, ...]
    at: float


Recipients = Callable[[random.Random], tuple[str, ...]]


def ordinary_recipients(rng: random.Random) -> tuple[str, ...]:
    return tuple(f"user{rng.randrange(10_000)}@example.org" for _ in range(rng.choice((1, 1, 2))))


def token_message(token: str, size: int = 2048) -> bytes:
    head = f"From: a@example.com\r\nSubject: fault {token}\r\n{TOKEN_HEADER}: {token}\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n"
    return head.encode() + line * max(1, size // len(line))


@attrs.define
class SenderFigures:
    attempts: Counter[str] = attrs.Factory(Counter)  # messages offered, by source
    acknowledged: Counter[str] = attrs.Factory(Counter)
    refused: Counter[str] = attrs.Factory(Counter)  # answers that were not an ack, by code
    broken: Counter[str] = attrs.Factory(Counter)  # transactions cut by a dead connection
    unreachable: Counter[str] = attrs.Factory(Counter)  # no connection at all (daemon down)


class Senders:
    """SMTP and API senders in threads until :meth:`stop`; the ledger is :attr:`acks`."""

    def __init__(
        self,
        ports: Ports,
        api_key: str | None,
        *,
        recipients: Recipients = ordinary_recipients,
        smtp_threads: int = 2,
        api_threads: int = 1,
        size: int = 2048,
        pause: float = 0.0,
        seed: int = 7,
    ) -> None:
        self.ports = ports
        self.api_key = api_key
        self.recipients = recipients
        self.size = size
        self.pause = pause
        self.acks: dict[str, Ack] = {}
        self.figures = SenderFigures()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._serial = 0
        self._run = seed  # in every token: two Senders of one test never share a token
        self._threads = [
            threading.Thread(target=self._smtp, args=(seed + i,), daemon=True)
            for i in range(smtp_threads)
        ]
        if api_key is not None:
            self._threads += [
                threading.Thread(target=self._api, args=(seed + 100 + i,), daemon=True)
                for i in range(api_threads)
            ]

    def __enter__(self) -> Senders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
            assert not thread.is_alive(), "a sender thread did not stop"

    def _token(self, source: str) -> str:
        with self._lock:
            self._serial += 1
            self.figures.attempts[source] += 1
            return f"{source}-{self._run}-{self._serial:06d}"

    def _acknowledged(
        self, token: str, message_id: str, source: str, rcpts: tuple[str, ...]
    ) -> None:
        with self._lock:
            self.acks[token] = Ack(token, message_id, source, rcpts, time.monotonic())
            self.figures.acknowledged[source] += 1

    def _count(self, counter: Counter[str], key: str) -> None:
        with self._lock:
            counter[key] += 1

    def _smtp(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.ports.smtp, timeout=10) as client:
                    client.ehlo()
                    while not self._stop.is_set():
                        self._smtp_one(client, rng)
                        time.sleep(self.pause)
            except ConnectionRefusedError:
                self._count(self.figures.unreachable, "smtp")
                time.sleep(0.05)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)

    def _smtp_one(self, client: smtplib.SMTP, rng: random.Random) -> None:
        token, rcpts = self._token("smtp"), self.recipients(rng)
        try:
            code, _ = client.mail("sender@example.com")
            if code != 250:
                self._count(self.figures.refused, f"smtp {code}")
                raise smtplib.SMTPResponseException(code, b"MAIL refused")
            accepted = tuple(r for r in rcpts if client.rcpt(r)[0] == 250)
            if accepted != rcpts:
                self._count(self.figures.refused, "smtp rcpt")
                client.rset()
                return
            code, text = client.data(token_message(token, self.size))
        except smtplib.SMTPDataError as exc:
            self._count(self.figures.refused, f"smtp {exc.smtp_code}")
            raise
        except (OSError, smtplib.SMTPServerDisconnected):
            self._count(self.figures.broken, "smtp")
            raise
        if code == 250:
            self._acknowledged(token, text.split()[-1].decode(), "smtp", rcpts)
        else:
            self._count(self.figures.refused, f"smtp {code}")

    def _api(self, seed: int) -> None:
        rng = random.Random(seed)
        headers = {"Authorization": f"Bearer {self.api_key}"}
        with httpx.Client(
            base_url=f"http://127.0.0.1:{self.ports.api}", headers=headers, timeout=10
        ) as client:
            while not self._stop.is_set():
                token, rcpts = self._token("api"), self.recipients(rng)
                body = {
                    "from": "sender@example.com",
                    "to": list(rcpts),
                    "subject": f"fault {token}",
                    "text": "The quick brown fox jumps over the lazy dog.\n" * (self.size // 46),
                    "headers": {TOKEN_HEADER: token},
                }
                try:
                    response = client.post("/api/v1/messages", json=body)
                except httpx.ConnectError:
                    self._count(self.figures.unreachable, "api")
                    time.sleep(0.05)
                    continue
                except httpx.TransportError:
                    self._count(self.figures.broken, "api")
                    time.sleep(0.05)
                    continue
                if response.status_code == 202:
                    self._acknowledged(token, response.json()["id"], "api", rcpts)
                else:
                    self._count(self.figures.refused, f"api {response.status_code}")
                    time.sleep(0.05)
                time.sleep(self.pause)


# --- the message log --------------------------------------------------------------------------


@attrs.frozen
class LogRow:
    message_id: str | None
    event: str
    at: float
    attempt: int | None
    relay: str | None
    response: str | None


def log_rows(db: Path) -> list[LogRow]:
    """Every message_log row, oldest first."""
    connection = sqlite3.connect(db)
    try:
        rows = connection.execute(
            "SELECT message_id, event, at, attempt, relay, response FROM message_log ORDER BY id"
        )
        return [LogRow(*row) for row in rows]
    finally:
        connection.close()


def sample(items: Iterable[str | None], n: int = 5) -> list[str]:
    """A few of ``items``, for a failure message."""
    return sorted(str(item) for item in items)[:n]


class HealthProber:
    """Probes ``/health`` on a new TLS connection every ``every`` seconds until stopped."""

    def __init__(self, port: int, every: float = 0.1) -> None:
        self.port = port
        self.every = every
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)  # a fresh connection each time
        with httpx.Client(verify=False, timeout=10, limits=limits) as client:  # noqa: S501
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    status = client.get(f"https://127.0.0.1:{self.port}/health").status_code
                except httpx.HTTPError:
                    status = 0
                self.latencies.append(time.monotonic() - started)
                self.statuses[status] += 1
                self.stop.wait(self.every)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]
