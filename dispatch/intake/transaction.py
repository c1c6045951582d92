"""The mail transaction of an inbound SMTP session and the spool message it writes.

A transaction (RFC 5321 §3.3) starts with ``MAIL``, gathers recipients with ``RCPT`` and
ends when its data is committed, refused or abandoned. :class:`MailTransaction` holds what it
has gathered and, from ``DATA`` or the first ``BDAT`` on, the spool
:class:`~dispatch.spool.IncomingMessage` being written (a ``tmp/`` file and its descriptor).

:class:`TransactionSlot` holds a session's open transaction and is the one place it is
replaced or cleared — RSET, EHLO, HELO, STARTTLS, the end of the data, the end of the session.
A message still open in a transaction that is replaced is queued, and
:meth:`TransactionSlot.abort_dropped` (which the session runs before it reads on, and once
more, shielded, when it ends) aborts it: no path that abandons a transaction can leave its
spool file and descriptor behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
import trio

from dispatch.intake.dkim_verify import MessageCopy
from dispatch.intake.received import LoopDetector
from dispatch.smtp.dsn import MailDsn, RcptDsn, mail_dsn, rcpt_dsn
from dispatch.smtp.events import Mail, Rcpt
from dispatch.spool import IncomingMessage


class MessageSpool(Protocol):
    """Where sessions start messages: the :class:`~dispatch.spool.Spool` in the main process,
    a :class:`~dispatch.spool.SpoolEntrance` in an intake worker process."""

    def begin(self) -> IncomingMessage: ...


@attrs.define
class MailTransaction:
    """What ``MAIL`` and ``RCPT`` gathered, and the message being written, if any."""

    mail_from: str
    recipients: list[str] = attrs.Factory(list)
    mail_dsn: MailDsn = attrs.Factory(MailDsn)  # RET, ENVID (RFC 3461)
    recipient_dsn: dict[str, RcptDsn] = attrs.Factory(dict)  # NOTIFY, ORCPT given per RCPT
    message: IncomingMessage | None = None
    loops: LoopDetector = attrs.Factory(LoopDetector)
    chunk_size: int = 0  # the BDAT chunk being read
    dkim_copy: MessageCopy | None = None  # kept for listener.dkim_verify (intake/dkim_verify.py)

    @classmethod
    def begin(cls, command: Mail) -> MailTransaction:
        """The transaction ``MAIL`` opens, with its RFC 3461 parameters (RET, ENVID)."""
        dsn = mail_dsn(command.params)
        assert isinstance(dsn, MailDsn)  # the core refused the command otherwise
        return cls(command.reverse_path, mail_dsn=dsn)

    def add_recipient(self, command: Rcpt) -> None:
        """An accepted ``RCPT``, with its NOTIFY and ORCPT (RFC 3461 §4.1) when it gave any."""
        self.recipients.append(command.forward_path)
        dsn = rcpt_dsn(command.params)
        assert isinstance(dsn, RcptDsn)  # the core refused the command otherwise
        if dsn != RcptDsn():
            self.recipient_dsn[command.forward_path] = dsn

    async def open_message(self, spool: MessageSpool, received: Callable[[str], bytes]) -> None:
        """Start the spool message with its ``Received:`` header (made from the new id).

        Nothing to do for a later ``BDAT`` chunk of a message already open.
        """
        if self.message is not None:
            return
        self.message = spool.begin()
        await self.message.write(received(self.message.id))

    async def write(self, data: bytes) -> None:
        """Append message data; the chunks of a refused ``BDAT`` (no message) are dropped."""
        if self.message is None:
            return
        self.loops.feed(data)
        if self.dkim_copy is not None:
            self.dkim_copy.feed(data)
        await self.message.write(data)


class TransactionSlot:
    """A session's open transaction, and the messages of abandoned ones until aborted."""

    def __init__(self) -> None:
        self._current: MailTransaction | None = None
        self._dropped: list[IncomingMessage] = []

    @property
    def current(self) -> MailTransaction | None:
        return self._current

    @current.setter
    def current(self, new: MailTransaction | None) -> None:
        old = self._current
        if old is not None and old is not new and old.message is not None:
            self._dropped.append(old.message)
            old.message = None
        self._current = new

    @property
    def has_dropped(self) -> bool:
        return bool(self._dropped)

    def discard_message(self) -> None:
        """Queue the open transaction's message for aborting, keeping the transaction."""
        transaction = self._current
        if transaction is not None and transaction.message is not None:
            self._dropped.append(transaction.message)
            transaction.message = None

    async def abort_dropped(self) -> None:
        """Abort the queued messages (closes their descriptors and removes their ``tmp/``
        files). Shielded: it also runs while the session is being cancelled."""
        if not self._dropped:
            return  # the common case, every session's end: no scope to open
        with trio.CancelScope(shield=True):
            while self._dropped:
                await self._dropped.pop().abort()
