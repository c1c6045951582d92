""":class:`IntakeWorkers` in the test's Trio loop, with one real intake worker process.

The worker is a real ``python -m dispatch intake-worker`` accepting on a socket the test
bound (the test runs no listener of its own, so every connection lands on the worker). The
main side runs here under a virtual clock that moves only once every task has been idle for
:data:`IDLE_BEFORE_A_TIMER_FIRES` real seconds: a SIGHUP-style reload that changes a listener
key must reach the worker while that clock stands still — pushed on the change, with no timer
(such as a settings poll) in between.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

import trio
import trio.testing

from dispatch.config.live import LiveSettings
from dispatch.config.loader import load_settings
from dispatch.spool import Spool
from dispatch.storage.records import MessageEvent
from tests.intake.conftest import one_intake_worker, write_worker_config

IDLE_BEFORE_A_TIMER_FIRES = 30.0  # far above a worker's start-up or one SMTP conversation
ATTEMPTS = 200  # connections tried before giving up on seeing the change (each takes ms)


def write_config(path: Path, port: int, max_message_bytes: int) -> None:
    write_worker_config(path, port, f"max_message_bytes = {max_message_bytes}\n")


def advertised_size(port: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("push.test")
        return client.esmtp_features["size"]


async def test_a_reload_reaches_the_worker_without_any_timer(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = IDLE_BEFORE_A_TIMER_FIRES
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    config = tmp_path / "dispatch.toml"
    write_config(config, port, 111_111)
    live = LiveSettings(load_settings(config), config)
    spool = await Spool.open(tmp_path / "spool")
    events: list[MessageEvent] = []
    async with one_intake_worker(
        listeners,
        lambda: live.current,
        spool,
        record=events.append,
        audit=lambda entry: None,  # no AUTH here: nothing is audited
        wait_changed=live.wait_changed,
    ):
        assert await trio.to_thread.run_sync(advertised_size, port) == "111111"

        before = trio.current_time()
        write_config(config, port, 222_222)
        assert (await live.reload()).applied
        seen = []
        for _ in range(ATTEMPTS):
            seen.append(await trio.to_thread.run_sync(advertised_size, port))
            if seen[-1] == "222222":
                break
        assert seen[-1] == "222222", f"the worker never saw the reload: {seen[:5]}..."
        assert trio.current_time() == before, "a timer had to fire before the worker had it"
    assert events == []  # no mail was sent
