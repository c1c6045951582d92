"""Operator commands on the spool, the same whether the daemon or the CLI runs them.

Each command takes the open :class:`~dispatch.spool.Spool` and plain JSON arguments and
returns plain JSON data; errors a user can cause raise :class:`CommandError` with a message
that names the message id and what to do.

Captured mail (the Local inbox, ``<spool>/captured/``) is not in the spool's index: the
``local`` relay delivered it. ``spool list --state captured`` and ``spool show ID`` read it
from that folder, in a worker thread.
"""

from __future__ import annotations

import contextlib
import email.message
import email.policy
import email.utils
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import trio

from dispatch.config import Settings
from dispatch.delivery.attempt import DeliveryAttempt
from dispatch.delivery.routing import Router
from dispatch.spool import (
    CorruptEnvelopeError,
    Envelope,
    MessageBusyError,
    MessageState,
    Spool,
    SpoolEntry,
    SpoolError,
    UnknownMessageError,
    WrongStateError,
    is_valid_id,
)
from dispatch.spool.captured import CapturedCopy, list_captured, read_captured
from dispatch.spool.layout import SpoolLayout

log = logging.getLogger("dispatch.control")

CAPTURED: Final = "captured"
"""The pseudo-state of a message in the Local inbox (captured/), for list and show."""


class CommandError(Exception):
    """A command that cannot be done as asked (unknown id, wrong state …)."""


def entry_data(entry: SpoolEntry) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(entry.envelope.to_json())
    data["state"] = entry.state.value
    data["retrying"] = entry.state is MessageState.INCOMING and entry.envelope.attempts > 0
    return data


def _entry(spool: Spool, message_id: object) -> SpoolEntry:
    if not is_valid_id(message_id):
        raise CommandError(f"{message_id!r} is not a message id (they look like spl_01…)")
    assert isinstance(message_id, str)
    try:
        return spool.get(message_id)
    except UnknownMessageError:
        raise CommandError(
            f"no message {message_id} in the spool (delivered, deleted, or never accepted)"
        ) from None


async def spool_list(spool: Spool, state: str | None = None, limit: int = 1000) -> dict[str, Any]:
    if state == CAPTURED:
        return await captured_list(spool, limit)
    wanted = None
    if state is not None:
        try:
            wanted = MessageState(state)
        except ValueError:
            choices = ", ".join([*(s.value for s in MessageState), CAPTURED])
            raise CommandError(f"{state!r} is not a spool state; use one of: {choices}") from None
    entries: list[dict[str, Any]] = []
    for entry in spool.entries(wanted):
        if len(entries) >= limit:
            break
        entries.append(entry_data(entry))
    counts = spool.counts()
    return {
        "counts": {
            "incoming": counts.incoming,
            "retrying": counts.retrying,
            "processing": counts.processing,
            "failed": counts.failed,
        },
        "entries": entries,
    }


async def spool_show(spool: Spool, message_id: object) -> dict[str, Any]:
    """A spooled message, else a captured one; a message in both shows its captured copy's
    path as ``captured_path``."""
    try:
        entry = _entry(spool, message_id)
    except CommandError:
        if not is_valid_id(message_id):
            raise
        assert isinstance(message_id, str)
        captured = await trio.to_thread.run_sync(_read_captured, _captured_dir(spool), message_id)
        if captured is None:
            raise
        return captured
    data = entry_data(entry)
    data["path"] = str(spool.message_path(entry.envelope.id))
    copy = _captured_dir(spool) / f"{entry.envelope.id}.eml"
    if await trio.Path(copy).exists():
        data["captured_path"] = str(copy)
    return data


def _captured_dir(spool: Spool) -> Path:
    return SpoolLayout(spool.directory).captured


async def captured_list(spool: Spool, limit: int) -> dict[str, Any]:
    """The newest ``limit`` captured messages, oldest first, and how many there are."""
    directory = _captured_dir(spool)
    return await trio.to_thread.run_sync(_list_captured, directory, limit)


def _list_captured(directory: Path, limit: int) -> dict[str, Any]:
    """Blocking: list ``directory`` (a listing of names, then ``limit`` envelopes read)."""
    listing = list_captured(directory, limit)
    return {
        "directory": str(directory),
        "counts": {CAPTURED: listing.total, "unreadable": listing.unreadable},
        "entries": [_captured_data(copy) for copy in listing.copies],
    }


def _read_captured(directory: Path, message_id: str) -> dict[str, Any] | None:
    """Blocking: one captured message's envelope and paths; None if it is not there."""
    try:
        copy = read_captured(directory, message_id)
    except (OSError, CorruptEnvelopeError) as exc:
        raise CommandError(f"captured message {message_id} cannot be read: {exc}") from None
    return None if copy is None else _captured_data(copy)


def _captured_data(copy: CapturedCopy) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(copy.envelope.to_json())
    data["state"] = CAPTURED
    data["retrying"] = False
    data["captured_at"] = copy.captured_at
    data["path"] = str(copy.path)
    return data


async def spool_retry(spool: Spool, message_id: object) -> dict[str, Any]:
    entry = _entry(spool, message_id)
    if entry.state is not MessageState.FAILED:
        raise CommandError(
            f"message {entry.envelope.id} is {entry.state.value}, not failed: only failed "
            "messages can be retried one by one (incoming ones are retried on their own; "
            "`spool retry --all` makes all waiting mail due now)"
        )
    try:
        envelope = await spool.retry_failed(entry.envelope.id)
    except (WrongStateError, MessageBusyError) as exc:
        raise CommandError(str(exc)) from None
    return {"id": envelope.id, "state": "incoming"}


FLUSH_STATES: Final = (MessageState.INCOMING.value, MessageState.FAILED.value)


def _undelivered(envelope: Envelope) -> list[str]:
    results = envelope.recipient_results
    return [r for r in envelope.recipients if r not in results or results[r].status != "delivered"]


async def spool_flush(
    spool: Spool,
    settings: Settings,
    relay: object = None,
    state: object = None,
    *,
    who: str,
    now: float | None = None,
) -> dict[str, Any]:
    """Make waiting mail due now: ``spool retry --all``, the ``postqueue -f`` of Dispatch.

    Incoming messages waiting for a retry become due at once (attempts kept, see
    :meth:`Spool.make_due`); failed ones go back to incoming with their attempts reset, as
    ``spool retry ID`` does. ``state`` limits it to one of the two; ``relay`` to messages
    with an undelivered recipient that the current routes send through that relay (first or
    failover). Messages being delivered are left alone. Logged at INFO with ``who`` asked.
    """
    if state is not None and state not in FLUSH_STATES:
        raise CommandError(
            f"--state {state!r} cannot be flushed; use incoming or failed (or neither: both)"
        )
    names = [r.name for r in settings.relays]
    if relay is not None and relay not in names:
        raise CommandError(f"relay {relay!r} is not configured; configured: {', '.join(names)}")
    router = Router(settings.routes, settings.default_relay)

    def wanted(envelope: Envelope) -> bool:
        return relay is None or any(
            relay in router.route(envelope.mail_from, rcpt).relays
            for rcpt in _undelivered(envelope)
        )

    now = time.time() if now is None else now
    made_due = already_due = retried = busy = 0
    if state in (None, MessageState.INCOMING.value):
        made_due, already_due, busy = _flush_incoming(spool, wanted, now)
    if state in (None, MessageState.FAILED.value):
        retried, busy_failed = await _flush_failed(spool, wanted, now)
        busy += busy_failed
    result = {
        "made_due": made_due + retried,
        "incoming": made_due,
        "failed": retried,
        "already_due": already_due,
        "busy": busy,
        "relay": relay,
        "state": state,
    }
    log.info(
        "spool flush by %s (relay %s, state %s): %d messages made due (%d waiting, %d failed "
        "back to incoming), %d due already, %d busy",
        who,
        relay or "any",
        state or "incoming and failed",
        made_due + retried,
        made_due,
        retried,
        already_due,
        busy,
    )
    return result


def _flush_incoming(
    spool: Spool, wanted: Callable[[Envelope], bool], now: float
) -> tuple[int, int, int]:
    """Make waiting incoming messages due: (made due, due already, busy)."""
    made_due = already_due = busy = 0
    for entry in spool.entries(MessageState.INCOMING):
        if not wanted(entry.envelope):
            continue
        if entry.envelope.next_attempt_at <= now:
            already_due += 1
        elif spool.make_due(entry.id, now=now):
            made_due += 1
        else:
            busy += 1
    return made_due, already_due, busy


async def _flush_failed(
    spool: Spool, wanted: Callable[[Envelope], bool], now: float
) -> tuple[int, int]:
    """Put failed messages back to incoming, due now: (retried, busy)."""
    retried = busy = 0
    for entry in spool.entries(MessageState.FAILED):  # a snapshot: the loop awaits
        if not wanted(entry.envelope):
            continue
        try:
            await spool.retry_failed(entry.id, now=now)
        except (UnknownMessageError, WrongStateError, MessageBusyError):
            busy += 1  # deleted, retried or claimed meanwhile
        else:
            retried += 1
    return retried, busy


async def spool_delete(spool: Spool, message_id: object) -> dict[str, Any]:
    entry = _entry(spool, message_id)
    if entry.state is MessageState.PROCESSING:
        raise CommandError(
            f"message {entry.envelope.id} is being delivered right now; try again in a moment"
        )
    try:
        await spool.delete(entry.envelope.id)
    except (WrongStateError, MessageBusyError) as exc:
        raise CommandError(str(exc)) from None
    return {"id": entry.envelope.id, "deleted": True, "state": entry.state.value}


SEND_TEST_WAIT_SECONDS = 120.0


def _test_message(sender: str, recipient: str, relay: str) -> bytes:
    message = email.message.EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = f"Dispatch test message through relay {relay}"
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain="dispatch.invalid")
    message.set_content(
        f"This message was sent by `dispatch send-test` through the relay {relay!r}.\n"
        "If you can read it, the relay works.\n"
    )
    return message.as_bytes()


async def send_test(
    spool: Spool,
    attempt: DeliveryAttempt,
    settings: Settings,
    relay: object,
    to: object,
    sender: object,
) -> dict[str, Any]:
    """Spool a test message forced through ``relay`` and wait for that one attempt's result.

    A test message that is not delivered at once is deleted, not retried: the operator
    wants to know whether the relay works now.
    """
    names = [r.name for r in settings.relays]
    if relay not in names:
        raise CommandError(f"relay {relay!r} is not configured; configured: {', '.join(names)}")
    for what, value in (("--to", to), ("--from", sender)):
        if not isinstance(value, str) or "@" not in value or not value.isprintable():
            raise CommandError(f"{what} {value!r} is not an address like user@example.com")
    assert isinstance(relay, str)  # checked above; these narrow the types for mypy
    assert isinstance(to, str)
    assert isinstance(sender, str)
    async with spool.begin() as message:
        await message.write(_test_message(sender, to, relay))
        envelope = await message.commit(
            mail_from=sender,
            recipients=(to,),
            source="smtp",
            peer_ip=None,
            auth_identity="send-test",
            tags=("send-test",),
        )
        forced = attempt.force(envelope.id, relay)  # no checkpoint since the commit
    with trio.move_on_after(SEND_TEST_WAIT_SECONDS):
        await forced.settled.wait()
    result = forced.result
    with contextlib.suppress(SpoolError):  # delivered ones are gone already
        await spool.delete(envelope.id)
    if result is None:
        raise CommandError(f"no answer from relay {relay} within {SEND_TEST_WAIT_SECONDS:.0f} s")
    (outcome,) = result.outcomes
    return {
        "id": envelope.id,
        "relay": relay,
        "outcome": outcome.outcome,
        "response": outcome.response,
        "remote_id": result.remote_id,
    }
