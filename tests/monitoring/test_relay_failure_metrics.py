"""A relay that is down, and one that refuses, move their own failure figures in ``/metrics``.

A real ``python -m dispatch`` routes one message to a relay whose port has nothing listening
(every attempt: connection refused, transient), one to an upstream that refuses the
recipient with ``550`` (permanent) and one to the local relay. With one retry one second
after the first attempt, the message for the relay that is down fails when its retries run
out; that failure is counted against that relay.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Daemon, free_port
from tests.support.config import base_config, dump, smtp_relay
from tests.support.sink import StartSink

type Series = dict[tuple[str, frozenset[tuple[str, str]]], float]

MESSAGE = b"From: a@example.test\r\nSubject: relay metrics\r\n\r\nbody\r\n"


def scrape(address: str) -> Series:
    text = httpx.get(f"http://{address}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def wait_for_series(
    address: str, done: Callable[[Series], bool], what: str, within: float = 60.0
) -> Series:
    """Scrape until ``done`` holds; fail naming ``what`` with the relay series last seen."""
    deadline = time.monotonic() + within
    while True:
        series = scrape(address)
        if done(series):
            return series
        if time.monotonic() > deadline:
            relay = {k: v for k, v in series.items() if k[0].startswith("dispatch_relay")}
            raise AssertionError(f"{what} not seen within {within:g} s; relay series: {relay}")
        time.sleep(0.2)


def test_relays_that_are_down_or_refuse_count_their_failures(
    tmp_path: Path, start_daemon: Callable[..., Daemon], start_sink: StartSink
) -> None:
    refusing = start_sink()
    monitoring = f"127.0.0.1:{free_port()}"
    config = base_config(
        tmp_path,
        relays=[
            {"name": "inbox", "kind": "local"},
            smtp_relay("down", free_port()),  # nothing listens there
            smtp_relay("refusing", refusing.port),
        ],
        default_relay="inbox",
        routes=[
            {"recipient_domain": "down.test", "relay": "down"},
            {"recipient_domain": "refuse.test", "relay": "refusing"},
        ],
        spool={"max_retries": 1, "retry_delays_seconds": [1]},
        monitoring={"address": monitoring},
        bounces={"enabled": False},  # the senders' DSNs would add to the figures counted here
    )
    daemon = start_daemon(dump(config))
    daemon.wait_for("all components ready")
    smtp_port = config["listener"]["ports"][0]
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
        client.sendmail("a@example.test", ["someone@down.test"], MESSAGE)
        client.sendmail("a@example.test", ["reject-me@refuse.test"], MESSAGE)
        client.sendmail("a@example.test", ["b@ok.test"], MESSAGE)

    final = wait_for_series(
        monitoring,
        lambda s: (
            value(s, "dispatch_relay_failed_today", relay="down") == 1
            and value(s, "dispatch_relay_failed_today", relay="refusing") == 1
            and value(s, "dispatch_relay_delivered_today", relay="inbox") == 1
        ),
        "one failure today for each failing relay and one delivery for the local one",
    )
    deliveries = "dispatch_relay_deliveries_total"
    # Two attempts (the first and one retry), each leaving the recipient for a retry.
    assert value(final, deliveries, relay="down", outcome="transient") == 2
    assert value(final, deliveries, relay="down", outcome="delivered") == 0
    assert value(final, deliveries, relay="refusing", outcome="permanent") == 1
    assert value(final, deliveries, relay="refusing", outcome="transient") == 0
    assert value(final, deliveries, relay="inbox", outcome="delivered") == 1
    assert value(final, deliveries, relay="inbox", outcome="permanent") == 0
    assert value(final, "dispatch_relay_failed_today", relay="inbox") == 0

    durations = "dispatch_relay_attempt_duration_seconds"
    assert value(final, f"{durations}_count", relay="down") == 2
    assert value(final, f"{durations}_count", relay="refusing") == 1
    assert value(final, f"{durations}_count", relay="inbox") == 1
    assert value(final, f"{durations}_bucket", relay="down", le="+Inf") == 2
    # A refused connection on loopback takes far less than the relay's 5 s timeout.
    assert (value(final, f"{durations}_sum", relay="down") or 0) < 5.0

    assert value(final, "dispatch_messages_today", event="failed") == 2
    assert value(final, "dispatch_spool_files", state="failed") == 2
    assert refusing.messages == []


@contextlib.contextmanager
def silent_upstream() -> Iterator[int]:
    """A TCP server on loopback that accepts connections and never says a word: an upstream
    that hangs. Yields its port; closes everything on exit."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        server.close()


def test_a_relay_whose_upstream_hangs_is_shown_suspended(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    monitoring = f"127.0.0.1:{free_port()}"
    with silent_upstream() as port:
        config = base_config(
            tmp_path,
            relays=[
                {"name": "inbox", "kind": "local"},
                smtp_relay("hung", port, timeout_seconds=1),
            ],
            default_relay="hung",
            monitoring={"address": monitoring},
        )
        daemon = start_daemon(dump(config))
        daemon.wait_for("all components ready")
        before = scrape(monitoring)
        assert value(before, "dispatch_relay_suspended", relay="hung") == 0
        with smtplib.SMTP("127.0.0.1", config["listener"]["ports"][0], timeout=10) as client:
            client.sendmail("a@example.test", ["b@example.test"], MESSAGE)
        # The greeting does not come within the relay's timeout: the relay is suspended.
        during = wait_for_series(
            monitoring,
            lambda s: value(s, "dispatch_relay_suspended", relay="hung") == 1,
            "the hung relay suspended",
        )
    assert value(during, "dispatch_relay_suspended", relay="inbox") == 0
    assert value(during, "dispatch_relay_deliveries_total", relay="hung", outcome="transient") == 1
