"""Regression: a hung upstream must not hold every delivery worker (issue 8, failing upstreams).

Before the fix each delivery to an upstream that accepts connections and never answers waited
out the whole relay timeout, so a few such messages occupied every worker at once and no
other route delivered meanwhile. Now the first timeout suspends the relay for
``timeout_seconds`` (deliveries fail fast, transient), then one trial connection at a time
goes through until one works.
"""

from __future__ import annotations

import time
from pathlib import Path

import trio
import trio.lowlevel

from dispatch.config.types import PositiveFloat
from dispatch.relays.base import DeliveryResult
from tests.conftest import free_port
from tests.relays.peers import ScriptedSmtp, greet_then_hang, raw_server
from tests.relays.test_smtp_relay import MESSAGE, make_relay, request

TIMEOUT = 0.4


async def test_timeouts_suspend_the_relay_then_one_trial_connection_lifts_it(
    tmp_path: Path,
) -> None:
    eml = tmp_path / "message.eml"
    eml.write_bytes(MESSAGE)
    hanging = True
    working = ScriptedSmtp()

    async def upstream(stream: trio.SocketStream) -> None:
        if hanging:
            await greet_then_hang(stream)
        else:
            await working(stream)

    async with raw_server(upstream) as server:
        relay = make_relay(server.port, timeout_seconds=PositiveFloat(TIMEOUT))

        async def timed() -> tuple[DeliveryResult, float]:
            started = time.monotonic()
            result = await relay.deliver(request(eml))
            return result, time.monotonic() - started

        first, took = await timed()
        assert "timed out" in first.outcomes[0].response
        assert took >= TIMEOUT
        # Suspended: no connection, no waiting, a transient answer that says why.
        fast, took = await timed()
        assert took < 0.1
        assert fast.outcomes[0].outcome == "transient"
        assert "suspended after" in fast.outcomes[0].response
        assert server.connections == 1

        await trio.sleep(TIMEOUT)
        hanging = False  # the upstream has recovered; one trial connection finds out
        results: list[str] = []

        async def deliver_one() -> None:
            results.append((await relay.deliver(request(eml))).outcomes[0].response)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliver_one)
            await trio.lowlevel.checkpoint()
            nursery.start_soon(deliver_one)  # while the trial runs: fails fast
        assert sum("trial connection" in r for r in results) == 1
        assert sum(r.startswith("250") for r in results) == 1, results
        after, _ = await timed()  # lifted: an ordinary delivery
        assert after.outcomes[0].outcome == "delivered"
        await relay.aclose()
    assert len(working.messages) == 2


async def test_refused_connections_suspend_nothing(tmp_path: Path) -> None:
    eml = tmp_path / "message.eml"
    eml.write_bytes(MESSAGE)
    relay = make_relay(free_port(), timeout_seconds=PositiveFloat(TIMEOUT))
    for _ in range(3):
        [outcome] = (await relay.deliver(request(eml))).outcomes
        assert outcome.response.endswith("refused")
    await relay.aclose()
