"""One outbound SMTP mail transaction over an open :class:`SmtpConnection`.

Theory of operation: :meth:`SmtpClientSession.send` runs one mail transaction planned by
:class:`Transaction`: MAIL, every RCPT and DATA in one write when the server offers PIPELINING
(RFC 2920), one by one otherwise (:meth:`SmtpClientSession._exchange` is the one place that
differs); the message is sent from the bytes handed over (a small message, read with its
claim) or streams from the ``.eml`` file in blocks, read in a worker thread,
through ``ClientConnection.data_chunk`` — dot-stuffing only (RFC 5321 §4.5.2; the spool holds
CRLF lines, so the encoder's bare-CR/LF repair never changes a byte), the message is never
parsed or re-serialised. What may be sent when is the client core's state table: a bug here
that sends out of turn raises ``LocalProtocolError`` before a byte goes out. Opening, I/O,
deadlines and closing are :class:`~dispatch.relays.smtp_connection.SmtpConnection`'s.

Failures during a transaction (those ``smtp_connection.py`` lists) become outcomes for every
recipient whose fate is not known yet, so a 550 already received for one recipient stays
permanent, and the session is not reused.

Ownership and stopping: the session owns the open message file during :meth:`send` (none for a
message handed over whole). A cancelled :meth:`send` leaves closing to the owner (the relay),
which must call :meth:`abort`: a half-sent message must never be followed by anything but a
dropped connection, so that the server discards it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import attrs
import trio

from dispatch.relays.smtp_connection import SmtpConnection
from dispatch.relays.smtp_options import SessionError
from dispatch.relays.smtp_transaction import (
    MESSAGE_BLOCK_BYTES,
    Transaction,
    TransactionResult,
    open_message,
    verb_of,
    verbs,
)
from dispatch.smtp import NEED_DATA, Reply
from dispatch.smtp.dsn import MailDsn, RcptDsn
from dispatch.smtp.errors import RemoteProtocolError
from dispatch.smtp.events import (
    Command,
    Data,
    Mail,
    Rcpt,
    Rset,
)

__all__ = ["SmtpClientSession"]

log = logging.getLogger("dispatch.relays.smarthost")


class SmtpClientSession(SmtpConnection):
    """One outbound SMTP connection that runs mail transactions (see the module docstring).

    Build it with :meth:`connect`; everything about the connection itself (``usable``,
    ``tls_active``, ``trace``, closing) is :class:`SmtpConnection`'s.
    """

    # --- one transaction -------------------------------------------------------------------

    async def reset(self) -> bool:
        """RSET before reusing the connection (RFC 5321 §4.1.1.5). It doubles as a check that
        the server is still there: False means the session is unusable (close it)."""
        try:
            reply = await self._command(Rset(), self.timeouts.command, "RSET")
        except SessionError:
            return False
        if reply.code != 250:
            self.usable = False
        return self.usable

    async def send(
        self,
        mail_from: str,
        recipients: Sequence[str],
        message_path: Path,
        size: int,
        *,
        smtputf8: bool = False,
        mail_dsn: MailDsn | None = None,
        recipient_dsn: Mapping[str, RcptDsn] | None = None,
        prefix: bytes = b"",
        content: bytes | None = None,
    ) -> TransactionResult:
        """Run one mail transaction; every ordinary failure is an outcome, not an exception.

        ``prefix``: header lines sent before the stored message, as bytes (a DKIM-Signature,
        `dispatch.relays.dkim_sign`); ``size`` is the stored message's, the prefix is added.
        ``content``: the whole stored message when the caller has it already (read with the
        claim, `DeliveryRequest.content`); it is sent as is and ``message_path`` not opened.

        The checks that need no round trip come first and fail permanently without sending
        (see :meth:`Transaction.refusal`).
        """
        if not self.usable:
            raise RuntimeError("send() on an unusable session")  # a bug in the pool
        label = self.options.label
        tx = Transaction.plan(
            self.extensions,
            mail_from,
            recipients,
            size + len(prefix),
            smtputf8=smtputf8,
            mail_dsn=mail_dsn,
            recipient_dsn=recipient_dsn,
        )
        if (refusal := tx.refusal(self.options.display)) is not None:
            self._note(f"not sent: {refusal}", error=True)
            return TransactionResult.all(recipients, "permanent", f"{label}: {refusal}")
        message: BinaryIO | None = None
        if content is not None:
            first = content
        else:
            try:
                message, first = await trio.to_thread.run_sync(open_message, message_path)
            except OSError as exc:
                text = f"{label}: cannot read the message: {exc}"
                self._note(text, error=True)
                return TransactionResult.all(recipients, "transient", text)
        self.transactions += 1
        replies_before = self.replies
        try:
            await self._run(tx, message, prefix + first)
        except SessionError as exc:
            tx.fail_rest(exc.outcome, exc.text)
        finally:
            if message is not None:
                message.close()  # a read-only file: closing cannot block on writing back
        self._check_quiet()
        result = tx.result(answered=self.replies > replies_before)
        return attrs.evolve(result, remote_mta=self.options.tls_server_name or None)

    async def _run(self, tx: Transaction, message: BinaryIO | None, first: bytes) -> None:
        """MAIL, RCPT..., DATA (see `_exchange`), then the message if the server said 354 and
        a recipient was accepted; the replies go to ``tx``."""
        t = self.timeouts
        await self._exchange(tx.commands, tx.wants, tx.record)
        if not tx.message_may_follow:
            return  # refused, or not sent: the next reuse starts with RSET
        if not tx.accepted:
            # RFC 2920 §3.1: a server that said 354 although no RCPT succeeded gets an empty
            # message; it has no recipient to deliver it to.
            await self._write(self._conn.end_data(), t.data_block, "ending an empty DATA")
            await self._read(t.data_end, "waiting for the reply to an empty DATA")
            return
        await self._send_message(message, first)
        tx.record_final(await self._read(t.data_end, "waiting for the reply to the end of data"))

    async def _exchange(
        self,
        commands: Sequence[Command],
        wanted: Callable[[Command], bool],
        record: Callable[[Command, Reply], None],
    ) -> None:
        """Send ``commands`` and hand each reply to ``record``, in order.

        The one place where PIPELINING makes a difference. Offered (RFC 2920 §3.1): every
        command goes in one write and every reply is read, whatever the earlier ones said.
        Not offered: each command waits for the reply to the one before, and the first one
        ``wanted`` declines ends the exchange unsent.
        """
        pipelined = self.extensions.pipelining
        if pipelined:
            wire = b"".join(self._send_traced(command) for command in commands)
            await self._write(wire, self.timeouts.mail, f"sending {verbs(commands)}")
        for command in commands:
            verb, seconds = verb_of(command), self._timeout_for(command)
            if pipelined:
                reply = await self._read(seconds, f"waiting for the reply to {verb}")
            elif wanted(command):
                reply = await self._command(command, seconds, verb)
            else:
                return
            record(command, reply)

    def _timeout_for(self, command: Command) -> float:
        """RFC 5321 §4.5.3.2: MAIL, RCPT and DATA's 354 each have their own deadline."""
        t = self.timeouts
        if isinstance(command, Mail):
            return t.mail
        if isinstance(command, Rcpt):
            return t.rcpt
        return t.data_init if isinstance(command, Data) else t.command

    async def _send_message(self, message: BinaryIO | None, first: bytes) -> None:
        """Send the message, starting with ``first`` (its first block, read on opening);
        without an open ``message``, ``first`` is all of it."""
        block, sent = first, 0
        while True:
            sent += len(block)
            wire = self._conn.data_chunk(block)
            if message is None or len(block) < MESSAGE_BLOCK_BYTES:
                # A short read of a regular file is its end: no thread hop to learn it. The
                # final "." goes in the same write as the last block: one segment, not two.
                wire += self._conn.end_data()
                await self._write(wire, self.timeouts.data_block, "sending the message")
                break
            await self._write(wire, self.timeouts.data_block, "sending the message")
            try:
                block = await trio.to_thread.run_sync(message.read, MESSAGE_BLOCK_BYTES)
            except OSError as exc:
                # Half a message has gone out: only dropping the connection makes the server
                # discard it (it must never see the final ".").
                self.usable = False
                raise SessionError(
                    "transient", self.options.label, f"cannot read the message: {exc}"
                ) from None
        self._note(f"C: <the message, {sent} bytes> .")

    def _check_quiet(self) -> None:
        """After a transaction nothing more may have arrived: an extra or unsolicited reply
        means the dialogue is out of step, and the connection is not reused."""
        if not self.usable:
            return
        try:
            event = self._conn.next_event()
        except RemoteProtocolError as exc:
            log.info(
                "%s: %s out of step (%s); not reused", self.options.label, self.options.display, exc
            )
            self.usable = False
            return
        if event is not NEED_DATA or self._conn.closed:
            self.usable = False
