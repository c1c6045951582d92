"""Regression: a hung upstream must not hold every delivery worker (issue 8, failing upstreams).

Before the fix each delivery to an upstream that accepts connections and never answers waited
out the whole relay timeout, so a few such messages occupied every worker at once and no
other route delivered meanwhile. Now the first timeout suspends the relay for
``timeout_seconds`` (deliveries fail fast, transient), then one trial connection at a time
goes through until one works.

What suspends is the typed flag ``SessionError.timed_out``, set where a wait runs out of time,
never the wording of an error (a server may well say "timed out" in a reply); each suspension
and each resumption is one row of the audit log (SPEC §7, category Relay), written here into a
real SQLite store.
"""

from __future__ import annotations

import time
from pathlib import Path

import trio
import trio.lowlevel

from dispatch.config.types import PositiveFloat
from dispatch.relays.base import DeliveryResult
from dispatch.relays.smarthost import SmtpRelayClient
from dispatch.relays.smtp_options import SessionError, SessionOptions, Timeouts
from dispatch.relays.smtp_session import SmtpClientSession
from tests.conftest import free_port
from tests.relays.peers import ScriptedSmtp, greet_then_hang, raw_server
from tests.relays.test_smtp_relay import MESSAGE, make_relay, relay_settings, request
from tests.storage.conftest import make_store, query, running

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


async def says_timed_out_and_closes(stream: trio.SocketStream) -> None:
    await stream.send_all(b"421 4.4.2 hang.test: connection timed out, try later\r\n")


def options(port: int) -> SessionOptions:
    return SessionOptions(
        label="relay primary",
        address="127.0.0.1",
        port=port,
        tls_server_name="127.0.0.1",
        display=f"127.0.0.1:{port}",
        helo_name="dispatch.test",
        tls="none",
        ssl_context=None,
        timeouts=Timeouts.scaled(TIMEOUT),
    )


async def test_the_session_error_says_whether_a_wait_timed_out() -> None:
    async def connect(port: int) -> SessionError:
        try:
            session = await SmtpClientSession.connect(options(port))
        except SessionError as exc:
            return exc
        await session.abort()
        raise AssertionError("connected")

    async with raw_server(greet_then_hang) as hung:
        error = await connect(hung.port)
        assert error.timed_out
        assert "timed out after 0.4 s waiting for the reply to EHLO" in error.detail
    async with raw_server(says_timed_out_and_closes) as wordy:
        error = await connect(wordy.port)
        assert "timed out" in error.detail  # the server's words, not a timeout
        assert not error.timed_out
    error = await connect(free_port())
    assert error.detail.endswith("refused")
    assert not error.timed_out


async def test_a_reply_that_says_timed_out_suspends_nothing(tmp_path: Path) -> None:
    eml = tmp_path / "message.eml"
    eml.write_bytes(MESSAGE)
    async with raw_server(says_timed_out_and_closes) as server:
        relay = make_relay(server.port, timeout_seconds=PositiveFloat(TIMEOUT))
        for _ in range(3):
            [outcome] = (await relay.deliver(request(eml))).outcomes
            assert outcome.outcome == "transient"
            assert "connection timed out, try later" in outcome.response
            assert "suspended" not in outcome.response
        await relay.aclose()
    assert server.connections == 3  # each delivery tried: none failed fast


async def test_suspension_and_resumption_are_written_to_the_audit_log(tmp_path: Path) -> None:
    """One row when the relay is suspended (Warning), none while it stays so (fail-fast
    deliveries, a trial that times out again), one when a trial connection lifts it."""
    eml = tmp_path / "message.eml"
    eml.write_bytes(MESSAGE)
    db = tmp_path / "dispatch.db"
    store = make_store(db, tmp_path)
    hanging = True
    working = ScriptedSmtp()

    async def upstream(stream: trio.SocketStream) -> None:
        await (greet_then_hang if hanging else working)(stream)

    async with running(store), raw_server(upstream) as server:
        settings = relay_settings(server.port, timeout_seconds=PositiveFloat(TIMEOUT))
        relay = SmtpRelayClient(settings, "dispatch.test", audit=store.log.audit)
        responses = [(await relay.deliver(request(eml))).outcomes[0].response]
        responses.append((await relay.deliver(request(eml))).outcomes[0].response)
        await trio.sleep(TIMEOUT)
        responses.append((await relay.deliver(request(eml))).outcomes[0].response)  # trial
        assert "timed out" in responses[0]
        assert "suspended after" in responses[1]
        assert "timed out" in responses[2]
        await trio.sleep(TIMEOUT)
        hanging = False
        [delivered] = (await relay.deliver(request(eml))).outcomes
        assert delivered.outcome == "delivered"
        await relay.aclose()
    # The store has stopped: every entry handed to it is in the database now.
    rows = query(db, "SELECT category, level, message, actor FROM audit_log ORDER BY at, id")
    assert server.connections == 3  # the first attempt, the trial, the one that worked
    assert rows == [
        (
            "Relay",
            "Warning",
            "relay primary suspended for 1 s, then tried again one connection at a time: "
            f"timed out after 0.4 s waiting for the reply to EHLO (127.0.0.1:{server.port})",
            "dispatch",
        ),
        ("Relay", "Info", "relay primary resumed: a trial connection worked", "dispatch"),
    ]
