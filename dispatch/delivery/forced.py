"""Sending one message now through a relay an operator chose: :func:`send_through`.

The dashboard's "send a test message" (Relays page) and "release" (Local inbox) both spool a
message and force its first attempt through one relay, ignoring the routes
(:meth:`DeliveryAttempt.force`), then wait for that attempt's outcome to show the upstream's
reply. The message goes through the spool like any other — written and fsynced in
``incoming/``, claimed by a delivery worker, logged in the message log — so the relay is
tested exactly as it delivers.

What is not delivered by that one attempt is deleted, not retried: the operator asked for
"this relay, now", and a retry would be routed by the rules instead (to the Local inbox,
perhaps). Whatever the message was made from (a captured copy) is left untouched, so
nothing is lost by giving up.
"""

from __future__ import annotations

import contextlib
import email.message
import email.policy
import email.utils
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import attrs
import trio

from dispatch.delivery.attempt import DeliveryAttempt
from dispatch.spool import Spool, SpoolError

WAIT_SECONDS: Final = 120.0
"""How long the caller waits for the attempt: longer than any relay's default timeout, so a
slow upstream answers rather than being given up on."""

READ_CHUNK: Final = 1 << 20  # bytes of a source file copied into the spool per thread hop


@attrs.frozen
class ForcedOutcome:
    """What the one attempt did: its message id in the spool, the relay, and per recipient
    the outcome (``delivered``, ``transient``, ``permanent``) with the upstream's reply; or
    ``timed_out`` when no answer came within the wait."""

    message_id: str
    relay: str
    outcomes: tuple[tuple[str, str, str], ...]  # (recipient, outcome, reply)
    remote_id: str | None = None
    timed_out: bool = False

    @property
    def delivered(self) -> bool:
        return bool(self.outcomes) and all(o == "delivered" for _, o, _ in self.outcomes)

    @property
    def summary(self) -> str:
        """One line for a page or the audit log."""
        if self.timed_out:
            return f"no answer from relay {self.relay} within {WAIT_SECONDS:.0f} s"
        counts: dict[str, int] = {}
        for _, outcome, _ in self.outcomes:
            counts[outcome] = counts.get(outcome, 0) + 1
        return ", ".join(f"{n} {outcome}" for outcome, n in counts.items())


def relay_test_message(sender: str, recipient: str, relay: str) -> bytes:
    """A short plain-text message saying which relay it was sent through."""
    message = email.message.EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = f"Dispatch test message through relay {relay}"
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain="dispatch.invalid")
    message.set_content(
        f"This message was sent from the Dispatch dashboard through the relay {relay!r}.\n"
        "If you can read it, the relay works.\n"
    )
    return message.as_bytes()


async def send_through(
    spool: Spool,
    attempt: DeliveryAttempt,
    *,
    relay: str,
    body: bytes | Path,
    mail_from: str,
    recipients: Sequence[str],
    identity: str,
    tags: Sequence[str] = (),
    wait: float = WAIT_SECONDS,
) -> ForcedOutcome:
    """Spool ``body`` (bytes, or a file copied as it is) for ``recipients``, force its first
    attempt through ``relay`` and wait up to ``wait`` seconds for the outcome.

    ``identity`` is recorded as the envelope's auth identity (who sent it: ``dashboard``).
    Raises the spool's errors if the message cannot be written (nothing is spooled then)
    and ``ValueError`` for an envelope the spool refuses. The caller checks that ``relay``
    is configured: an unknown one fails the attempt transiently, which is reported.
    Cancellation while waiting leaves the message to the delivery worker already holding
    it; it is deleted when it comes back undelivered only if the wait ends normally.
    """
    async with spool.begin() as message:
        if isinstance(body, Path):
            await _copy_file(body, message.write)
        else:
            await message.write(body)
        envelope = await message.commit(
            mail_from=mail_from,
            recipients=tuple(recipients),
            source="smtp",
            peer_ip=None,
            auth_identity=identity,
            tags=tuple(tags),
        )
        forced = attempt.force(envelope.id, relay)  # no checkpoint since the commit
    with trio.move_on_after(wait):
        await forced.settled.wait()
    result = forced.result
    with contextlib.suppress(SpoolError):  # a delivered message is gone already
        await spool.delete(envelope.id)
    if result is None:
        return ForcedOutcome(envelope.id, relay, (), timed_out=True)
    outcomes = tuple((o.recipient, o.outcome, o.response) for o in result.outcomes)
    return ForcedOutcome(envelope.id, relay, outcomes, result.remote_id)


async def _copy_file(path: Path, write: Callable[[bytes], Awaitable[None]]) -> None:
    """Append the file's bytes through ``write``, reading in worker threads."""
    handle = await trio.to_thread.run_sync(path.open, "rb")
    try:
        while chunk := await trio.to_thread.run_sync(handle.read, READ_CHUNK):
            await write(chunk)
    finally:
        handle.close()
