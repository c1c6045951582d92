"""The durable spool: accepted messages on disk, and their states (SPEC §5).

Promise #1 of Dispatch is that no acknowledged message is ever lost. Intake acknowledges a
message only after :meth:`IncomingMessage.commit` returned, which is after the body and the
envelope are fsynced and renamed into ``incoming/`` and that directory is fsynced. From then
on every state change is a rename ordered so that start-up recovery can always put the
message back into exactly one state.

Typical use::

    spool = await Spool.open(config.spool.directory)

    async with spool.begin() as message:          # intake
        async for chunk in body:
            await message.write(chunk)
        envelope = await message.commit(mail_from=..., recipients=..., source="smtp",
                                        peer_ip=...)
    # now answer 250

    await spool.wait_until_due()                  # delivery scanner
    for envelope in await spool.claim_due(limit=8):
        ...  # deliver, then spool.remove / spool.release / spool.mark_failed
"""

from dispatch.spool.envelope import Deferral, Envelope, RecipientResult
from dispatch.spool.errors import (
    CorruptEnvelopeError,
    MessageBusyError,
    SpoolError,
    SpoolFullError,
    SpoolWriteError,
    UnknownMessageError,
    WrongStateError,
)
from dispatch.spool.ids import is_valid_id, new_id
from dispatch.spool.index import SpoolCounts, SpoolEntry
from dispatch.spool.layout import MessageState
from dispatch.spool.recovery import BODY_MISSING, RecoveryReport
from dispatch.spool.spool import Spool
from dispatch.spool.writer import SPILL_THRESHOLD, IncomingMessage, SpoolEntrance

__all__ = [
    "BODY_MISSING",
    "SPILL_THRESHOLD",
    "CorruptEnvelopeError",
    "Deferral",
    "Envelope",
    "IncomingMessage",
    "MessageBusyError",
    "MessageState",
    "RecipientResult",
    "RecoveryReport",
    "Spool",
    "SpoolCounts",
    "SpoolEntrance",
    "SpoolEntry",
    "SpoolError",
    "SpoolFullError",
    "SpoolWriteError",
    "UnknownMessageError",
    "WrongStateError",
    "is_valid_id",
    "new_id",
]
