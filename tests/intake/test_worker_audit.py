"""An intake worker process's AUTH throttling reaches the main process's audit log, once.

One real ``python -m dispatch intake-worker`` accepts on a socket the test bound (the test
runs no listener of its own, so every connection lands on the worker); the worker counts
the failures in its own throttle and sends the entry over the link (``Logged``), where
:class:`IntakeWorkers` hands it to the audit callable the composition root gave it.
"""

from __future__ import annotations

import base64
import smtplib
from pathlib import Path

import trio

from dispatch.config.loader import load_settings
from dispatch.security.passwords import hash_password
from dispatch.spool import Spool
from dispatch.storage import AuditEntry, MessageEvent
from tests.intake.conftest import one_intake_worker, write_worker_config
from tests.support.waiting import wait_until_async

PASSWORD = "the right password"


def write_config(path: Path, port: int) -> None:
    user = f'{{username = "alice", password_hash = "{hash_password(PASSWORD)}"}}'
    write_worker_config(path, port, f"allow_unsecure_auth = true\nusers = [{user}]\n")


def guess(port: int, password: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        plain = base64.b64encode(f"\0alice\0{password}".encode()).decode()
        return client.docmd("AUTH PLAIN", plain)[0]


async def test_a_workers_auth_throttling_is_audited_by_the_main_process(tmp_path: Path) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    config = tmp_path / "dispatch.toml"
    write_config(config, port)
    settings = load_settings(config)
    spool = await Spool.open(tmp_path / "spool")
    events: list[MessageEvent] = []
    audited: list[AuditEntry] = []
    async with one_intake_worker(
        listeners, lambda: settings, spool, record=events.append, audit=audited.append
    ):
        codes = [await trio.to_thread.run_sync(guess, port, f"guess {n}") for n in range(8)]
        assert codes == [535] * 5 + [454] * 3  # the worker's throttle: 5 per address
        await wait_until_async(lambda: bool(audited), what="the worker's audit entry")
    [entry] = audited  # once, although three attempts were refused
    assert (entry.category, entry.level, entry.actor) == ("Auth", "Warning", "127.0.0.1")
    assert entry.message.startswith("SMTP AUTH: 127.0.0.1 throttled after 5 failed attempts")
    assert events == []  # no mail was sent
