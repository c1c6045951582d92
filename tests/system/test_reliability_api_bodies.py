"""Scenario (issue 11, item 4): hostile API bodies while ``/health`` is probed.

A 4 MiB ``{"to": [0, 0, …]}`` used to take 11.8 s on the event loop and answer 110 MB;
``/health`` meanwhile took 4.9 s (deadline 2 s) and answered some ``503``s. Now bodies are
parsed, validated and composed in a worker thread, and validation describes at most
``MAX_PROBLEMS`` problems.

A real daemon gets, from several client threads at once and for several rounds, bodies
built to be expensive: millions of bad list items, bad strings, deep nesting of arrays and
objects, a million-digit number, a million custom headers, thousands of multipart parts, a
5 MB multipart part header, an unterminated multipart body, oversized HTTP headers, and one
honest 20 MiB message. ``/health`` on the dashboard port (HTTPS, self-signed) is probed on
a fresh connection every 100 ms throughout. Checked: every probe answers ``200`` within
``health.timeout_seconds``; every hostile body gets a ``4xx`` (never a ``5xx``) with a
small answer; the honest message is queued; nothing is left in the spool's ``tmp/``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dispatch.api.problems import MAX_PROBLEMS
from tests.conftest import Daemon
from tests.support.config import Ports, base_config, write_config
from tests.support.waiting import wait_until
from tests.system.faults import (
    UNLIMITED_API,
    HealthProber,
    assert_spool_whole,
    create_api_key,
    report,
)

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]
HEALTH_TIMEOUT = 2.0  # health.timeout_seconds, the default
SENDERS = 2  # below api.max_concurrent_requests_per_ip (8): every body is taken in
ROUNDS = 2
MAX_ANSWER = 16 * 1024
MIB = 1 << 20
JSON = "application/json"
MULTIPART = "multipart/form-data; boundary=B"


def form_part(name: str, value: bytes) -> bytes:
    return b'--B\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (
        name.encode(),
        value,
    )


def hostile_bodies() -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """name -> (content type, body, extra headers)."""
    base = b'"from": "a@example.com", "text": "hi", '
    return {
        "2M zero list items": (JSON, b'{"to": [' + b"0," * 2_000_000 + b"0]}", {}),
        "1M bad strings": (JSON, b"{" + base + b'"to": [' + b'"\\n",' * 1_000_000 + b'"x"]}', {}),
        "1M nested arrays": (JSON, b"[" * MIB, {}),
        "200k nested objects": (JSON, b'{"a":' * 200_000, {}),
        "million-digit number": (JSON, b'{"to": ' + b"9" * MIB + b"}", {}),
        "1M unknown fields": (
            JSON,
            json.dumps({f"f{i}": 0 for i in range(1_000_000)}).encode(),
            {},
        ),
        "300k custom headers": (
            JSON,
            json.dumps(
                {"from": "a@example.com", "to": "b@example.org", "text": "hi"}
                | {"headers": {f"X-H{i}": "v" for i in range(300_000)}}
            ).encode(),
            {},
        ),
        "1M-address value": (
            JSON,
            json.dumps({"from": "a@example.com", "text": "t", "to": "x@y.example," * MIB}).encode(),
            {},
        ),
        "5000 multipart parts": (
            MULTIPART,
            b"".join(form_part("to", b"bad") for _ in range(5000)) + b"--B--\r\n",
            {},
        ),
        "999 bad multipart recipients": (
            MULTIPART,
            b"".join(form_part("to", b"bad\n") for _ in range(999)) + b"--B--\r\n",
            {},
        ),
        "5 MB part header": (
            MULTIPART,
            b'--B\r\nContent-Disposition: form-data; name="to"\r\nX-Long: '
            + b"a" * (5 * MIB)
            + b"\r\n\r\nbad\r\n--B--\r\n",
            {},
        ),
        "unterminated multipart": (MULTIPART, b"--B\r\n" + b"x" * (5 * MIB), {}),
        "100 KB request header": (JSON, b"{}", {"X-Huge": "h" * 100_000}),
    }


def honest_body() -> bytes:
    line = "x" * 70 + "\n"
    text = line * ((20 * MIB) // len(line))
    return json.dumps({"from": "a@example.com", "to": "b@example.org", "text": text}).encode()


def test_hostile_bodies_leave_health_within_its_deadline(
    start_daemon: Start, tmp_path: Path
) -> None:
    ports = Ports.pick()
    path = tmp_path / "dispatch.toml"
    text = write_config(path, base_config(tmp_path, ports, api=UNLIMITED_API))
    key = create_api_key(path)
    daemon = start_daemon(text)
    daemon.wait_for("all components ready")
    bodies = hostile_bodies()
    answers: dict[str, list[tuple[int, int, float]]] = {name: [] for name in bodies}
    honest: list[int] = []
    errors: list[BaseException] = []

    def sender(offset: int) -> None:
        names = list(bodies)
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{ports.api}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            ) as client:
                for round_ in range(ROUNDS):
                    for n in range(len(names)):
                        name = names[(n + offset + round_) % len(names)]
                        content_type, body, extra = bodies[name]
                        started = time.monotonic()
                        response = client.post(
                            "/api/v1/messages",
                            content=body,
                            headers={"Content-Type": content_type, **extra},
                        )
                        answers[name].append(
                            (
                                response.status_code,
                                len(response.content),
                                time.monotonic() - started,
                            )
                        )
                    if offset == 0:
                        response = client.post(
                            "/api/v1/messages",
                            content=honest_body(),
                            headers={"Content-Type": JSON},
                        )
                        honest.append(response.status_code)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    prober = HealthProber(ports.webui)
    prober.thread.start()
    try:
        time.sleep(0.5)  # probes before the load, for comparison
        threads = [threading.Thread(target=sender, args=(i,)) for i in range(SENDERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        time.sleep(0.5)
    finally:
        prober.stop.set()
        prober.thread.join(timeout=30)
    spool = tmp_path / "spool"
    wait_until(lambda: not list((spool / "tmp").glob("api-*")), what="no body file left")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0

    assert errors == []
    assert all(len(got) == SENDERS * ROUNDS for got in answers.values()), answers
    statuses = {name: sorted({status for status, _, _ in got}) for name, got in answers.items()}
    assert all(400 <= s < 500 for got in statuses.values() for s in got), statuses
    largest = max(size for got in answers.values() for _, size, _ in got)
    assert largest < MAX_ANSWER
    assert honest == [202] * ROUNDS
    assert_spool_whole(spool)

    assert prober.latencies
    assert set(prober.statuses) == {200}, prober.statuses
    assert max(prober.latencies) < HEALTH_TIMEOUT, sorted(prober.latencies)[-5:]
    report(
        "hostile API bodies",
        {
            "senders": SENDERS,
            "bodies sent": sum(len(got) for got in answers.values()) + len(honest),
            "statuses": statuses,
            "slowest answer (s)": round(max(t for got in answers.values() for *_, t in got), 3),
            "largest answer (bytes)": largest,
            "problems described at most": MAX_PROBLEMS,
            "health probes": len(prober.latencies),
            "health p50 (s)": round(prober.quantile(0.5), 3),
            "health p99 (s)": round(prober.quantile(0.99), 3),
            "health max (s)": round(max(prober.latencies), 3),
        },
    )
