"""The supervisor: start order, readiness, crash restarts, start failures and stopping."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from dispatch.config import load_settings
from dispatch.config.live import LiveSettings
from dispatch.lifecycle import Component, Shutdown
from dispatch.supervisor import ComponentStartError, Supervisor


def live() -> LiveSettings:
    return LiveSettings(load_settings(None), None)


class Recorder:
    """Components that write what happens to them into one shared list."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def steady(self, name: str) -> Component:
        async def run(shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
            self.events.append(f"{name} starting")
            await trio.sleep(0.01)  # becoming ready takes a moment
            task_status.started()
            self.events.append(f"{name} ready")
            await shutdown.requested.wait()
            self.events.append(f"{name} stopped")

        return Component(name, run)

    def crashing(self, name: str, crashes: int, survived: trio.Event) -> Component:
        async def run(shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            self.events.append(f"{name} ready")
            if self.events.count(f"{name} ready") <= crashes:
                raise RuntimeError(f"{name} broke")
            survived.set()
            await shutdown.requested.wait()

        return Component(name, run)


async def test_components_start_in_order_each_after_the_previous_is_ready() -> None:
    rec = Recorder()
    sup = Supervisor([rec.steady("a"), rec.steady("b"), rec.steady("c")], live())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await sup.ready.wait()
        assert rec.events == [
            "a starting",
            "a ready",
            "b starting",
            "b ready",
            "c starting",
            "c ready",
        ]
        sup.request_stop()
    # Reverse order: the last started (e.g. a listener) stops first, storage last.
    assert rec.events[6:] == ["c stopped", "b stopped", "a stopped"]


async def test_a_component_that_cannot_start_ends_the_run_with_its_reason() -> None:
    rec = Recorder()

    async def broken(shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        raise OSError(98, "Address already in use")

    sup = Supervisor([rec.steady("a"), Component("smtp", broken), rec.steady("c")], live())
    with pytest.raises(ComponentStartError) as caught:
        await sup.run()
    assert str(caught.value) == "cannot start smtp: [Errno 98] Address already in use"
    assert "c starting" not in rec.events
    assert "a stopped" not in rec.events  # cancelled, not stopped gracefully


async def test_a_crashed_component_is_restarted_with_backoff(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    survived = trio.Event()
    sup = Supervisor([rec.crashing("worker", 3, survived)], live())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await sup.ready.wait()
        started = trio.current_time()
        await survived.wait()
        assert rec.events.count("worker ready") == 4
        # 0.5 + 1 + 2 seconds of back-off between the three restarts
        assert trio.current_time() - started == pytest.approx(3.5, abs=0.2)
        assert sup.restarts["worker"] == 3
        sup.request_stop()
    crashes = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(crashes) == 3
    assert all(r.exc_info and "worker broke" in str(r.exc_info[1]) for r in crashes)


async def test_grace_period_then_cancel(autojump_clock: trio.testing.MockClock) -> None:
    cancelled = trio.Event()

    async def stubborn(shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()  # ignores the stop request
        finally:
            cancelled.set()

    sup = Supervisor([Component("stubborn", stubborn)], live(), grace_seconds=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await sup.ready.wait()
        before = trio.current_time()
        sup.request_stop()
        await cancelled.wait()
        assert trio.current_time() - before == pytest.approx(5)


async def test_second_stop_request_stops_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async def slow_drain(shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await shutdown.requested.wait()
        await trio.sleep(100)  # a long drain

    sup = Supervisor([Component("slow", slow_drain)], live(), grace_seconds=60)
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await sup.ready.wait()
            sup.request_stop()
            await trio.sleep(0.5)
            sup.stop_now()


async def test_component_returning_unasked_is_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = 0

    async def quitter(shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        if runs == 1:
            return
        await shutdown.requested.wait()

    sup = Supervisor([Component("quitter", quitter)], live())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await sup.ready.wait()
        await trio.sleep(2)
        assert runs == 2
        sup.request_stop()
