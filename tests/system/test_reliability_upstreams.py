"""Scenario 3, failing upstreams: every way a smarthost can fail, while another route works.

Six routes lead to six upstreams that fail in six ways — Postfix's ``smtp-sink`` with its
misbehaviour flags (STACK.md), a closed port and a port that accepts and never speaks:

====================  ==========================================================
route (domain)        upstream
====================  ==========================================================
``refused.test``      nothing listens: connection refused
``hung.test``         accepts the connection, never sends a greeting
``closing.test``      ``smtp-sink -Q DATA``: 421 and disconnect at DATA
``dropped.test``      ``smtp-sink -q .``: disconnects after the data, no reply
``deferred.test``     ``smtp-sink -r RCPT``: 4xx to every recipient
``slow.test``         ``smtp-sink -w 2``: waits 2 s before answering DATA
====================  ==========================================================

while a seventh route (``good.test``, a plain ``smtp-sink``) takes a steady stream of mail.
Then every failing upstream heals (a plain ``smtp-sink`` on the same port). What must hold:
retries follow ``spool.retry_delays_seconds``; the hung upstream costs a worker at most the
relay's timeout per attempt, so the good route keeps delivering meanwhile; and every
acknowledged message reaches an upstream in the end.
"""

from __future__ import annotations

import itertools
import signal
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, free_port
from tests.support.config import Ports, base_config, smtp_relay, write_config
from tests.support.waiting import wait_until
from tests.system.faults import (
    HungServer,
    LogRow,
    PostfixSink,
    Senders,
    assert_spool_whole,
    log_rows,
    report,
    sample,
    spool_busy,
    token_message,
)

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]

DELAYS = (0.5, 1.0, 2.0)
JITTER = 0.1  # dispatch/delivery/schedule.py adds up to 10 %
HUNG_TIMEOUT = 1.5
WORKERS = 4
# Three times as many hung messages as workers: without the relay's suspension every worker
# sat in the hung upstream's timeout three times in a row.
COUNT = {"refused": 4, "hung": 3 * WORKERS, "closing": 4, "dropped": 4, "deferred": 4, "slow": 2}
FAILING = ("refused", "hung", "closing", "dropped", "deferred", "slow")
HEAL_AFTER = 8.0
EXPECTED_ERROR = {
    "refused": "refused",
    "hung": "timed out",
    "closing": "421",
    "dropped": "closed",
    "deferred": "450",
}


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], None]]]:
    stops: list[Callable[[], None]] = []
    yield stops
    for stop in reversed(stops):
        stop()


def test_failing_upstreams_retry_on_schedule_and_lose_nothing(
    start_daemon: Start, tmp_path: Path, cleanup: list[Callable[[], None]]
) -> None:
    dumps = tmp_path / "dumps"
    good = PostfixSink(dumps / "good")
    cleanup.append(good.stop)
    refused_port = free_port()
    hung = HungServer()
    cleanup.append(hung.stop)
    misbehaving = {
        "closing": PostfixSink(dumps / "closing", "-Q", "DATA"),
        "dropped": PostfixSink(dumps / "dropped", "-q", "."),
        "deferred": PostfixSink(dumps / "deferred", "-r", "RCPT"),
        "slow": PostfixSink(dumps / "slow", "-w", "2"),
    }
    cleanup.extend(sink.stop for sink in misbehaving.values())
    ports_of = {"refused": refused_port, "hung": hung.port}
    ports_of.update({name: sink.port for name, sink in misbehaving.items()})

    relays = [smtp_relay("good", good.port)]
    relays += [smtp_relay(name, port) for name, port in ports_of.items() if name != "hung"]
    relays.append(smtp_relay("hung", hung.port, timeout_seconds=HUNG_TIMEOUT))
    routes = [{"recipient_domain": f"{name}.test", "relay": name} for name in ("good", *FAILING)]
    ports = Ports.pick()
    config = base_config(
        tmp_path,
        ports,
        default_relay="good",
        relays=relays,
        routes=routes,
        spool={"worker_count": WORKERS, "max_retries": 20, "retry_delays_seconds": list(DELAYS)},
    )
    daemon = start_daemon(write_config(tmp_path / "dispatch.toml", config))
    daemon.wait_for("all components ready")

    def good_only(rng: object) -> tuple[str, ...]:
        return ("someone@good.test",)

    acked: dict[str, str] = {}  # token -> queue id, of the failing routes
    with Senders(ports, None, recipients=good_only, smtp_threads=1, pause=0.05) as steady:
        began = time.monotonic()
        with smtplib.SMTP("127.0.0.1", ports.smtp, timeout=10) as client:
            client.ehlo()
            for n in range(max(COUNT.values())):
                for name in (f for f in FAILING if n < COUNT[f]):
                    token = f"{name}-{n}"
                    client.mail("a@example.com")
                    assert client.rcpt(f"rcpt{n}@{name}.test")[0] == 250
                    code, text = client.data(token_message(token))
                    assert code == 250
                    acked[token] = text.split()[-1].decode()
        time.sleep(max(0.0, HEAL_AFTER - (time.monotonic() - began)))
        # Every failing upstream heals: a plain smtp-sink on the same port.
        healed_at = time.monotonic() - began
        healed_wall = time.time()
        hung.stop()
        for sink in misbehaving.values():
            sink.stop()
        healed = {
            name: PostfixSink(dumps / f"{name}-healed", port=port)
            for name, port in ports_of.items()
        }
        cleanup.extend(sink.stop for sink in healed.values())

        def all_delivered() -> bool:
            arrived = {t for s in (*healed.values(), misbehaving["slow"]) for t in s.delivered()}
            return set(acked) <= arrived

        wait_until(all_delivered, within=60, what="the failing routes to deliver after healing")
    wait_until(lambda: spool_busy(tmp_path / "spool") == 0, within=30, what="the spool to drain")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert_spool_whole(tmp_path / "spool")

    # Nothing lost: every acknowledged message of the steady stream reached the good upstream.
    good_tokens = good.delivered()
    lost = [t for t in steady.acks if t not in good_tokens]
    assert not lost, f"acknowledged, never delivered: {sample(lost)}"

    rows = log_rows(tmp_path / "data" / "dispatch.db")
    by_message: dict[str, list[LogRow]] = {}
    for row in rows:
        if row.message_id is not None:
            by_message.setdefault(row.message_id, []).append(row)

    # Retries follow the schedule: attempt n+1 never before delay n, and not much after.
    too_early: list[str] = []
    worst_lateness = 0.0
    for token, message_id in acked.items():
        name = token.rsplit("-", 1)[0]
        attempts = [r for r in by_message[message_id] if r.event in ("retried", "delivered")]
        assert attempts[-1].event == "delivered", (token, attempts)
        for row in attempts[:-1]:
            if name in EXPECTED_ERROR and row.at < healed_wall:
                assert EXPECTED_ERROR[name] in (row.response or ""), (token, row)
        for n, (before, after) in enumerate(itertools.pairwise(attempts)):
            delay = DELAYS[min(n, len(DELAYS) - 1)]
            gap = after.at - before.at
            if gap < delay - 0.05:
                too_early.append(f"{token} attempt {n + 2} after {gap:.2f}s < {delay}s")
            worst_lateness = max(worst_lateness, gap - delay * (1 + JITTER))
        if name == "slow":
            assert len(attempts) == 1, "a slow upstream within the timeout is no failure"
    assert not too_early, too_early

    # The hung upstream never starved the good route: its mail kept flowing meanwhile.
    good_latency = [
        rows_[-1].at - rows_[0].at
        for rows_ in by_message.values()
        if rows_[-1].relay == "good" and rows_[0].event == "received"
    ]
    delivered_times = sorted(r.at for r in rows if r.event == "delivered" and r.relay == "good")
    start = delivered_times[0]
    during = [t for t in delivered_times if t - start < healed_at]
    longest_pause = max(b - a for a, b in itertools.pairwise(during))
    figures = {
        "messages to failing upstreams": len(acked),
        "attempts before delivery": {
            name: max(
                len([r for r in by_message[i] if r.event == "retried"])
                for t, i in acked.items()
                if t.startswith(name)
            )
            for name in FAILING
        },
        "worst lateness of a retry (s)": round(worst_lateness, 2),
        "good route: acknowledged": len(steady.acks),
        "good route: max latency (s)": round(max(good_latency), 2),
        "good route: longest pause between deliveries while failing (s)": round(longest_pause, 2),
    }
    report("failing upstreams", figures)
    assert worst_lateness < 3 * HUNG_TIMEOUT  # late only by queueing behind busy workers
    # Bounded by about one timeout (the first wave, before any attempt has timed out), not by
    # the number of hung messages: without the relay's suspension this was 3 x the timeout.
    assert longest_pause < 2 * HUNG_TIMEOUT
