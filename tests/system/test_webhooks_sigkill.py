"""Webhooks across a SIGKILL: every delivery event of an acknowledged message reaches the
receiver, at least once, whatever instant the daemon was killed (docs/webhooks.md)."""

from __future__ import annotations

import signal
import smtplib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, free_port
from tests.support.config import base_config, dump
from tests.support.waiting import wait_until
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]
SECRET = "whsec-sigkill-test"
READY = "all components ready"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver(default_status=500)  # "down" until the test says otherwise
    yield started
    started.stop()


def test_no_webhook_event_is_lost_across_sigkill(
    start_daemon: Start, tmp_path: Path, receiver: Receiver
) -> None:
    port = free_port()
    config = dump(
        base_config(
            tmp_path,
            listener={"ports": [port]},
            webhooks=[
                {
                    "url": receiver.url,
                    "secret": SECRET,
                    "retry_first_seconds": 0.2,
                    "retry_max_seconds": 1.0,
                }
            ],
        )
    )
    daemon = start_daemon(config)
    daemon.wait_for(READY)
    accepted: list[str] = []
    killed = threading.Event()

    def send() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo()
                for n in range(10_000):
                    code, text = _send(client, n)
                    assert code == 250
                    accepted.append(text.split()[-1].decode())
        except (smtplib.SMTPException, OSError):
            assert killed.is_set(), "the connection broke before the kill"

    sender = threading.Thread(target=send)
    sender.start()
    # Kill in the middle of the traffic: events are being recorded and calls failing (500).
    wait_until(lambda: len(receiver.event_ids()) >= 15, what="15 events called (and refused)")
    daemon.process.kill()
    killed.set()
    sender.join(timeout=30)
    assert daemon.wait_exit() == -signal.SIGKILL
    assert len(accepted) >= 15
    assert receiver.acknowledged == []  # nothing was taken before the kill

    receiver.default_status = 200  # the receiver is back
    restarted = start_daemon(config)
    restarted.wait_for(READY)

    def delivered_ids() -> set[str]:
        return {
            call.json()["message_id"]
            for call in list(receiver.acknowledged)
            if call.json()["event"] == "delivered"
        }

    wait_until(
        lambda: set(accepted) <= delivered_ids(),
        within=60,
        what="a delivered event, answered 200, for every accepted message",
    )
    assert all(call.signature_verifies(SECRET) for call in receiver.acknowledged)
    # Every call owed before the kill was made again: its event id was answered 200.
    wait_until(
        lambda: receiver.event_ids() <= {c.json()["id"] for c in receiver.acknowledged},
        what="every event id ever called answered 200 at last",
    )
    restarted.signal(signal.SIGTERM)
    assert restarted.wait_exit() == 0
    outbox = tmp_path / "data" / "webhooks" / "outbox.jsonl"
    assert outbox.read_bytes() == b""  # nothing owed


def _send(client: smtplib.SMTP, n: int) -> tuple[int, bytes]:
    assert client.mail("a@example.com")[0] == 250
    code, text = client.rcpt("b@example.org")
    assert code == 250, (code, text)
    return client.data(f"Subject: message {n}\r\n\r\nHello {n}.\r\n".encode())
