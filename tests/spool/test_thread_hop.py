"""The spool's thread hop (spool/thread_hop.py): a blocking call in a worker thread that
always runs to its end, bounded by a limiter, with its result or exception handed back."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from dispatch.spool.thread_hop import run_to_completion


async def test_the_result_and_the_exception_come_back_from_another_thread() -> None:
    limiter = trio.CapacityLimiter(2)
    trio_thread = threading.get_ident()
    assert await run_to_completion(threading.get_ident, limiter) != trio_thread

    def fail() -> None:
        raise FileNotFoundError("incoming/x.eml")

    with pytest.raises(FileNotFoundError, match=r"incoming/x\.eml"):
        await run_to_completion(fail, limiter)
    assert limiter.borrowed_tokens == 0


async def test_a_cancelled_caller_still_waits_for_the_call_and_gets_its_result() -> None:
    finished = threading.Event()
    results: list[str] = []
    scopes: list[trio.CancelScope] = []

    def slow() -> str:
        finished.wait(10)
        return "renamed"

    async def hop() -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            results.append(await run_to_completion(slow, trio.CapacityLimiter(1)))
            await trio.lowlevel.checkpoint()  # the cancellation lands here, after the result
            results.append("not reached")
        results.append(f"cancelled: {scope.cancelled_caught}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hop)
        await trio.testing.wait_all_tasks_blocked()  # the hop waits for its thread
        scopes[0].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert results == []  # still waiting for the thread, cancelled or not
        finished.set()
    assert results == ["renamed", "cancelled: True"]


async def test_the_limiter_bounds_the_calls_running_at_once() -> None:
    limiter = trio.CapacityLimiter(2)
    lock = threading.Lock()
    pair = threading.Barrier(2, timeout=10)  # two calls must run at once to get past it
    running = peak = 0

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        pair.wait()
        with lock:
            running -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(run_to_completion, work, limiter)
    assert peak == 2
    assert limiter.borrowed_tokens == 0


async def test_a_caller_cancelled_before_the_hop_or_while_it_waits_for_a_thread_still_runs_it() -> (
    None
):
    # A free token is taken without a checkpoint, a busy limiter is waited for shielded:
    # either way the call runs, and the cancellation lands at the caller's next checkpoint.
    limiter, holder = trio.CapacityLimiter(1), object()
    with trio.CancelScope() as scope:
        scope.cancel()
        assert await run_to_completion(lambda: "free token", limiter) == "free token"
    assert limiter.borrowed_tokens == 0

    results: list[str] = []
    scopes: list[trio.CancelScope] = []

    async def hop() -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            results.append(await run_to_completion(lambda: "token waited for", limiter))
            await trio.lowlevel.checkpoint()
            results.append("not reached")

    await limiter.acquire_on_behalf_of(holder)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hop)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == 1
        scopes[0].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert results == []  # still waiting for the token, cancelled or not
        limiter.release_on_behalf_of(holder)
    assert results == ["token waited for"]
    assert limiter.borrowed_tokens == 0
