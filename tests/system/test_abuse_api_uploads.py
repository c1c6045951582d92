"""Scenario (issue 11, item 1): 50 concurrent 25 MiB uploads to the API, three kinds of sender.

The API used to read a whole body (up to ``api.max_message_bytes``) before it looked at the
allow-list or the key: 20 such uploads from a refused address took the daemon from 69 MiB to
1.07 GiB. Now the gate decides from the request line and headers, refuses at once with
``Connection: close``, and streams only an admitted body to the spool's ``tmp/``.

One daemon, ``api.allowed_cidrs = ["127.0.0.2/32"]``; the peak RSS (VmHWM, reset through
``/proc/PID/clear_refs`` before each wave) is measured for 50 simultaneous uploads:

(a) from 127.0.0.1, a refused address: every answer is ``403``;
(b) from 127.0.0.2 without a key: ``401``, or ``503`` beyond ``api.max_concurrent_requests_per_ip``;
(c) from 127.0.0.2 with a valid key: ``202`` for those admitted, ``503`` for the rest.

Checked: the answers, the growth of the peak RSS in (a) and (b) (well under one body's
size per upload: the bodies are never read), the busy refusals counted in ``/metrics``, an
empty ``tmp/`` afterwards, and that every admitted message is whole in the spool.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dispatch.config.settings import ApiSettings
from dispatch.spool.testing import envelope_ids
from tests.conftest import Daemon
from tests.support.config import Ports, base_config, write_config
from tests.support.waiting import wait_until
from tests.system.faults import UNLIMITED_API, assert_spool_whole, create_api_key, metric, report

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]
MIB = 1 << 20
UPLOADS = 50
BODY_BYTES = 25 * MIB
REFUSED_SOURCE = "127.0.0.1"
ALLOWED_SOURCE = "127.0.0.2"
GROWTH_BOUND = 200 * MIB  # for the refused and keyless waves: no body is ever read
CHUNK = 64 * 1024


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current RSS (proc(5), clear_refs value 5)."""
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")


def json_body(size: int) -> bytes:
    """A valid send request of exactly ``size`` bytes: text lines of 70 characters."""
    head = b'{"from": "load@example.com", "to": "sink@example.org", "text": "'
    tail = b'"}'
    line = b"x" * 68 + b"\\n"  # 70 bytes of JSON: 68 characters and an escaped newline
    room = size - len(head) - len(tail)
    text = line * (room // len(line))
    text += b"y" * (room - len(text))
    body = head + text + tail
    json.loads(body)  # a real request, not filler
    assert len(body) == size
    return body


def upload(port: int, source: str, key: str | None, body: bytes) -> tuple[str, float]:
    """POST ``body`` as a client that stops sending when the answer comes; the status line.

    Returns ("403", seconds) etc., or ("reset", seconds) when the connection was closed
    before any answer could be read.
    """
    started = time.monotonic()
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    head = (
        b"POST /api/v1/messages HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\n"
        + auth
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0)) as s:
        s.sendall(head)
        view = memoryview(body)
        deadline = started + 120
        try:
            while time.monotonic() < deadline:
                readable, writable, _ = select.select([s], [s] if view else [], [], 1.0)
                if readable:
                    while chunk := s.recv(65536):
                        answer += chunk
                        if b"\r\n\r\n" in answer:
                            break
                    break
                if writable:
                    sent = s.send(view[:CHUNK])
                    view = view[sent:]
        except OSError:
            pass
    elapsed = time.monotonic() - started
    if not answer.startswith(b"HTTP/1.1 "):
        return "reset", elapsed
    return answer.split(b" ", 2)[1].decode(), elapsed


def wave(
    pid: int, port: int, source: str, key: str | None, body: bytes
) -> tuple[Counter[str], int, float]:
    """50 uploads at once; their answers, the peak RSS growth (bytes), the slowest answer."""
    before = vm_kib(pid, "VmRSS")
    reset_peak(pid)
    answers: list[tuple[str, float]] = []
    barrier = threading.Barrier(UPLOADS)

    def one() -> None:
        barrier.wait(timeout=60)
        answers.append(upload(port, source, key, body))

    threads = [threading.Thread(target=one) for _ in range(UPLOADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    peak = vm_kib(pid, "VmHWM")
    assert len(answers) == UPLOADS, "every upload ended"
    return Counter(code for code, _ in answers), (peak - before) * 1024, max(t for _, t in answers)


def test_uploads_from_refused_keyless_and_valid_senders_keep_memory_bounded(
    start_daemon: Start, tmp_path: Path
) -> None:
    ports = Ports.pick()
    config = base_config(
        tmp_path, ports, api={**UNLIMITED_API, "allowed_cidrs": [f"{ALLOWED_SOURCE}/32"]}
    )
    path = tmp_path / "dispatch.toml"
    text = write_config(path, config)
    key = create_api_key(path)
    daemon = start_daemon(text)
    daemon.wait_for("all components ready")
    pid = daemon.process.pid
    body = json_body(BODY_BYTES - 4096)  # the composed message must fit the 25 MiB limit
    start_kib = vm_kib(pid, "VmRSS")

    refused, refused_growth, refused_slowest = wave(pid, ports.api, REFUSED_SOURCE, None, body)
    keyless, keyless_growth, keyless_slowest = wave(pid, ports.api, ALLOWED_SOURCE, None, body)
    keyed, keyed_growth, keyed_slowest = wave(pid, ports.api, ALLOWED_SOURCE, key, body)

    spool = tmp_path / "spool"
    wait_until(lambda: not list((spool / "tmp").iterdir()), what="an empty spool tmp/")
    with httpx.Client(verify=False, timeout=10) as client:  # noqa: S501
        metrics = client.get(f"https://127.0.0.1:{ports.webui}/metrics").text
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert_spool_whole(spool)
    queued = len(
        {i for state in ("incoming", "processing") for i in envelope_ids(spool / state)}
        | {p.stem for p in (spool / "captured").glob("*.eml")}
    )

    # (a) Refused: 403 for everyone (or a reset if the close beat the answer), nothing read.
    assert set(refused) <= {"403", "reset"}, refused
    assert refused["403"] >= UPLOADS // 2, refused
    assert refused_growth < GROWTH_BOUND, refused_growth // MIB
    # (b) No key: 401 up to the per-address cap, 503 beyond it; nothing read either.
    assert set(keyless) <= {"401", "503", "reset"}, keyless
    assert keyless["401"] >= 1, keyless
    assert keyless_growth < GROWTH_BOUND, keyless_growth // MIB
    # (c) A valid key: the admitted ones are queued, the others told to come back (or reset:
    # the 503 closes a connection whose client is still sending, as in (a) and (b)).
    assert set(keyed) <= {"202", "503", "reset"}, keyed
    assert keyed["202"] >= 1, keyed
    assert queued >= keyed["202"]  # every 202 is a message in the spool
    busy = metric(
        metrics, "dispatch_api_busy_requests_total", reason="max_concurrent_requests_per_ip"
    )
    told_busy = keyless["503"] + keyed["503"]
    assert told_busy <= busy <= told_busy + keyless["reset"] + keyed["reset"]
    # Admitted bodies go to disk and composing them takes turns (LARGE_BODY_THREADS), but the
    # peak also holds what earlier builds left in other threads' malloc arenas (measured
    # +197 to +484 MiB): the promise is the configured one, the cap times the limit, far
    # below what 50 uploads held in memory would take.
    cap = ApiSettings().max_concurrent_requests
    assert keyed_growth < GROWTH_BOUND + cap * BODY_BYTES, keyed_growth // MIB

    report(
        "API uploads, 50 x 25 MiB at once",
        {
            "RSS at start (MiB)": start_kib // 1024,
            "refused address: answers": dict(refused),
            "refused address: peak RSS growth (MiB)": round(refused_growth / MIB, 1),
            "refused address: slowest answer (s)": round(refused_slowest, 3),
            "no key: answers": dict(keyless),
            "no key: peak RSS growth (MiB)": round(keyless_growth / MIB, 1),
            "no key: slowest answer (s)": round(keyless_slowest, 3),
            "valid key: answers": dict(keyed),
            "valid key: peak RSS growth (MiB)": round(keyed_growth / MIB, 1),
            "valid key: slowest answer (s)": round(keyed_slowest, 3),
        },
    )
