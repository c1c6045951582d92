"""``spool retry --all`` in-process: what the flush picks and what it does to each message.

The daemon-level proof (an upstream down, then up; the mail delivered within seconds of the
flush) is in tests/system/test_operator_cli.py; here a real spool on disk is flushed
directly and through the control protocol's handler.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from dispatch.config import parse_settings
from dispatch.control import commands
from dispatch.control.server import Operations, handle
from dispatch.spool import Envelope, MessageState, RecipientResult, Spool
from dispatch.spool.testing import write_pair
from dispatch.storage import AuditEntry

HOUR = 3600.0

SETTINGS = parse_settings(
    {
        "default_relay": "upstream",
        "relays": [
            {"name": "upstream", "kind": "smtp", "host": "127.0.0.1"},
            {"name": "backup", "kind": "smtp", "host": "127.0.0.1"},
            {"name": "inbox", "kind": "local"},
        ],
        "routes": [
            {"recipient_domain": "*.internal", "relay": "inbox"},
            {"recipient_domain": "failover.test", "relay": ["backup", "upstream"]},
        ],
    }
)


def waiting(root: Path, recipient: str, **fields: Any) -> Envelope:
    """An incoming message tried once, due in an hour."""
    options: dict[str, Any] = {
        "recipients": (recipient,),
        "attempts": 1,
        "next_attempt_at": time.time() + HOUR,
        "last_error": "connection refused",
    }
    options.update(fields)
    return write_pair(root, MessageState.INCOMING, **options)


async def flush(
    spool: Spool, *, relay: str | None = None, state: str | None = None
) -> dict[str, Any]:
    return await commands.spool_flush(spool, SETTINGS, relay, state, who="test")


async def test_flush_makes_waiting_mail_due_and_failed_mail_incoming(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    late = waiting(root, "a@example.org")
    due = waiting(root, "b@example.org", next_attempt_at=time.time() - 1)
    failed = write_pair(
        root, MessageState.FAILED, recipients=("c@example.org",), attempts=4, last_error="550"
    )
    spool = await Spool.open(root)
    assert spool.next_due_time() == due.next_attempt_at

    before = time.time()
    result = await flush(spool)
    assert result == {
        "made_due": 2,
        "incoming": 1,
        "failed": 1,
        "already_due": 1,
        "busy": 0,
        "relay": None,
        "state": None,
    }
    entry = spool.get(late.id)
    assert entry.state is MessageState.INCOMING
    assert before <= entry.envelope.next_attempt_at <= time.time()
    assert entry.envelope.attempts == 1  # a flush keeps the retry count going
    retried = spool.get(failed.id)
    assert retried.state is MessageState.INCOMING
    assert retried.envelope.attempts == 0  # as `spool retry ID` does
    with trio.fail_after(1):  # the scanner's wait ends at once
        await spool.wait_until_due()
    claimed = {e.id for e in await spool.claim_due(limit=10)}
    assert claimed == {late.id, due.id, failed.id}


async def test_flush_by_relay_follows_the_current_routes(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    upstream = waiting(root, "a@example.org")
    internal = waiting(root, "ops@mail.internal")
    failover = waiting(root, "x@failover.test")  # backup first, then upstream
    delivered_part = waiting(
        root,
        "ops@mail.internal",
        recipients=("ops@mail.internal", "b@example.org"),
        recipient_results={"ops@mail.internal": RecipientResult("delivered", "250", "inbox", 1.0)},
    )
    spool = await Spool.open(root)

    result = await flush(spool, relay="inbox")
    assert (result["made_due"], result["incoming"]) == (1, 1)
    assert spool.get(internal.id).envelope.next_attempt_at <= time.time()
    # Its only recipient left goes through upstream: not for the inbox.
    assert spool.get(delivered_part.id).envelope.next_attempt_at > time.time()

    result = await flush(spool, relay="upstream")
    assert result["made_due"] == 3  # upstream's own, the failover route's, and the rest
    for message in (upstream, failover, delivered_part):
        assert spool.get(message.id).envelope.next_attempt_at <= time.time()


async def test_flush_by_state(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    incoming = waiting(root, "a@example.org")
    failed = write_pair(root, MessageState.FAILED, recipients=("c@example.org",), attempts=4)
    spool = await Spool.open(root)

    assert (await flush(spool, state="failed"))["made_due"] == 1
    assert spool.get(incoming.id).envelope.next_attempt_at > time.time()  # not touched
    assert spool.get(failed.id).state is MessageState.INCOMING

    again = write_pair(root, MessageState.FAILED, recipients=("d@example.org",), attempts=4)
    spool = await Spool.open(root)
    result = await flush(spool, state="incoming")
    assert (result["made_due"], result["incoming"], result["already_due"]) == (1, 1, 1)
    assert spool.get(again.id).state is MessageState.FAILED  # not touched


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"relay": "nope"}, "relay 'nope' is not configured; configured: upstream, backup, inbox"),
        ({"state": "processing"}, "--state 'processing' cannot be flushed; use incoming or failed"),
    ],
)
async def test_flush_refuses_what_it_cannot_do(
    tmp_path: Path, args: dict[str, str], error: str
) -> None:
    spool = await Spool.open(tmp_path / "spool")
    with pytest.raises(commands.CommandError, match="^" + error.replace("(", r"\(")):
        await flush(spool, **args)


async def test_make_due_leaves_other_states_alone(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    failed = write_pair(root, MessageState.FAILED)
    due = waiting(root, "a@example.org", next_attempt_at=1.0e9)
    spool = await Spool.open(root)
    assert not spool.make_due(failed.id)
    assert not spool.make_due(due.id)  # due already: nothing to move
    assert not spool.make_due("spl_01J00000000000000000000000")
    assert spool.get(failed.id).state is MessageState.FAILED


async def test_without_the_daemon_the_flush_is_refused_and_says_why(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    message = waiting(root, "a@example.org")
    spool = await Spool.open(root)
    audited: list[AuditEntry] = []
    ops = Operations(spool, lambda: SETTINGS, audit=audited.append)
    answer = await handle(ops, {"command": "spool.flush"})
    assert answer["ok"] is False
    assert audited == []  # refused: nothing was done, so nothing is audited
    assert "spool retry --all needs the running daemon" in answer["error"]
    assert spool.get(message.id).envelope.next_attempt_at > time.time()
