"""One outbound mail transaction's plan and bookkeeping, without I/O.

A :class:`Transaction` is built for one delivery over one SMTP session: the checks that need
no round trip (:meth:`Transaction.refusal`), the commands to send (MAIL, one RCPT per
recipient, DATA), whether each is still worth sending given the replies so far, and what each
reply decides for which recipient. The session (`dispatch.relays.smtp_session`) does the
writing and reading and hands every reply here; :meth:`Transaction.result` gives the
:class:`TransactionResult` the relay turns into a `DeliveryResult`.

Reply classes decide outcomes (RFC 5321 §4.2.1, see `dispatch.relays.base`): a refused MAIL
decides every recipient; each RCPT reply decides its recipient; the reply to DATA, when it is
not 354, and the reply to the end of data decide every accepted recipient. Whatever is still
undecided when the session breaks gets the session's error (:meth:`Transaction.fail_rest`),
so a 550 already received for one recipient stays permanent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Final

import attrs

from dispatch.relays.base import DeliveryResult, Outcome, RecipientOutcome, outcome_of_code
from dispatch.smtp import Extensions, Reply
from dispatch.smtp.dsn import MailDsn, RcptDsn, mail_params, rcpt_params
from dispatch.smtp.events import Command, Data, Mail, Rcpt

__all__ = [
    "MESSAGE_BLOCK_BYTES",
    "Transaction",
    "TransactionResult",
    "open_message",
    "remote_id_of",
]

# Message blocks read from disk in a worker thread: large enough for few thread hops and
# few writes, small enough that a 25 MiB message is never held whole.
MESSAGE_BLOCK_BYTES: Final = 65_536

_UNSENDABLE: Final = re.compile(r"[\r\n\0]")
# Best effort: "queued as X" (Postfix, Dispatch), "id=X" (Exim).
_REMOTE_ID: Final = re.compile(r"queued as[:\s]+<?([^\s<>;,]+)>?|\bid=([^\s;,]+)", re.IGNORECASE)


@attrs.frozen
class TransactionResult:
    """What one mail transaction gave: an outcome per recipient (in the order given), the
    reply to the end of the data if it got that far, and the server's queue id if it said."""

    outcomes: tuple[RecipientOutcome, ...]
    final_reply: Reply | None = None
    remote_id: str | None = None
    dsn_passed: bool = False  # the server offers DSN and was given the message's parameters
    remote_mta: str | None = None  # the server's name (a DSN's Remote-MTA)
    answered: bool = True
    """Whether the server replied to any command of the transaction. If not, no byte of the
    message was sent (it only goes after a 354), so the server cannot have taken it."""

    @property
    def ended_cleanly(self) -> bool:
        """The transaction got as far as the reply to its data: the server is ready for the
        next MAIL without RSET (RFC 5321 §4.1.4). Not after one that stopped short."""
        return self.final_reply is not None

    def delivery_result(self) -> DeliveryResult:
        return DeliveryResult(
            self.outcomes, self.remote_id, dsn_passed=self.dsn_passed, remote_mta=self.remote_mta
        )

    @classmethod
    def all(cls, recipients: Sequence[str], outcome: Outcome, text: str) -> TransactionResult:
        return cls(tuple(RecipientOutcome(r, outcome, text) for r in recipients))


def remote_id_of(reply: Reply) -> str | None:
    """The server's queue id from a 250 reply to the end of data, if it looks like one."""
    match = _REMOTE_ID.search(reply.text)
    if match is None:
        return None
    return match.group(1) or match.group(2)


class Transaction:
    """MAIL, RCPT..., DATA for one delivery, and what their replies decide.

    Build it with :meth:`plan`. ``commands`` go out in order (all at once with PIPELINING,
    else one by one while :meth:`wants` says so); each reply goes to :meth:`record`, the one
    to the end of data to :meth:`record_final`. Owns only its bookkeeping.
    """

    def __init__(
        self,
        mail: Mail,
        recipients: Sequence[str],
        size: int,
        extensions: Extensions,
        rcpts: Sequence[Rcpt] | None = None,
    ) -> None:
        self.recipients = tuple(recipients)
        self.size = size
        self.extensions = extensions  # what the server offers
        if rcpts is None:
            rcpts = [Rcpt(r) for r in recipients]
        self.commands: tuple[Command, ...] = (mail, *rcpts, Data())
        self.accepted: list[int] = []  # indices of recipients whose RCPT was accepted
        self.data_reply: Reply | None = None
        self.final_reply: Reply | None = None
        self._outcomes: list[RecipientOutcome | None] = [None] * len(recipients)
        self._mail_accepted = False
        self._rcpt_replies = 0
        self.dsn_passed = False  # set by plan

    @classmethod
    def plan(
        cls,
        extensions: Extensions,
        mail_from: str,
        recipients: Sequence[str],
        size: int,
        *,
        smtputf8: bool,
        mail_dsn: MailDsn | None = None,
        recipient_dsn: Mapping[str, RcptDsn] | None = None,
    ) -> Transaction:
        """The transaction for a server offering ``extensions``. BODY=8BITMIME is declared
        whenever the server offers it (RFC 6152): the message is sent as stored, so it is
        never downgraded, and declaring it for a 7-bit message is harmless. The DSN
        parameters (RFC 3461 §5.2.1: RET, ENVID, NOTIFY, ORCPT) go only to a server that
        offers ``DSN``; to any other they are dropped, and the transaction says so
        (:attr:`dsn_passed` false), which makes a requested success notice Dispatch's."""
        dsn = extensions.has("DSN")
        rcpt_dsn = recipient_dsn or {}
        mail = Mail(
            mail_from,
            size=size if extensions.has("SIZE") else None,
            body="8BITMIME" if extensions.eightbitmime else None,
            smtputf8=smtputf8 or not all(a.isascii() for a in (mail_from, *recipients)),
            params=mail_params(mail_dsn) if dsn and mail_dsn is not None else {},
        )
        rcpts = [
            Rcpt(r, rcpt_params(rcpt_dsn[r]) if dsn and r in rcpt_dsn else {}) for r in recipients
        ]
        tx = cls(mail, recipients, size, extensions, rcpts)
        tx.dsn_passed = dsn
        return tx

    @property
    def mail(self) -> Mail:
        mail = self.commands[0]
        assert isinstance(mail, Mail)
        return mail

    def refusal(self, server: str) -> str | None:
        """Why the transaction must fail permanently without a byte sent, or None: a CR, LF or
        NUL in an address (it would end the command line early and inject another; the core
        refuses it too), SMTPUTF8 needed but not offered (RFC 6531 §3.4), a message larger
        than the server's SIZE (RFC 1870 §4). ``server`` names the server in the text."""
        extensions, size = self.extensions, self.size
        if any(_UNSENDABLE.search(a) for a in (self.mail.reverse_path, *self.recipients)):
            return "CR, LF or NUL in an address"
        if self.mail.smtputf8 and not extensions.smtputf8:
            return f"the message needs SMTPUTF8, which {server} does not offer (RFC 6531 §3.4)"
        if extensions.size is not None and size > extensions.size:
            return (
                f"the message ({size} bytes) is larger than the {extensions.size} bytes "
                f"{server} accepts (RFC 1870)"
            )
        return None

    def wants(self, command: Command) -> bool:
        """Is ``command`` still worth sending, given the replies so far? No RCPT after a
        refused MAIL, no DATA without an accepted recipient. (Without PIPELINING only: a
        pipelined group has gone out whole.)"""
        if isinstance(command, Rcpt):
            return self._mail_accepted
        if isinstance(command, Data):
            return bool(self.accepted)
        return True

    def record(self, command: Command, reply: Reply) -> None:
        """What the reply to one of ``commands`` decides."""
        if isinstance(command, Mail):
            self._mail_accepted = reply.is_positive
            if not reply.is_positive:
                self._decide(range(len(self.recipients)), reply)
        elif isinstance(command, Rcpt):
            index = self._rcpt_replies
            self._rcpt_replies += 1
            if self._outcomes[index] is not None:
                return  # MAIL was refused: every RCPT is answered 503
            if reply.is_positive:
                self.accepted.append(index)
            else:
                self._decide((index,), reply)
        elif isinstance(command, Data):
            self.data_reply = reply
            if reply.code != 354:
                self._decide(self.accepted, reply)

    @property
    def message_may_follow(self) -> bool:
        """DATA got its 354; whether any recipient was accepted is another question (an
        empty message ends a DATA the server took although every RCPT failed)."""
        return self.data_reply is not None and self.data_reply.code == 354

    def record_final(self, reply: Reply) -> None:
        """The reply to the end of data decides every accepted recipient."""
        self.final_reply = reply
        self._decide(self.accepted, reply)

    def fail_rest(self, outcome: Outcome, text: str) -> None:
        """The session broke: every recipient not decided yet gets ``outcome``."""
        for i, recipient in enumerate(self.recipients):
            if self._outcomes[i] is None:
                self._outcomes[i] = RecipientOutcome(recipient, outcome, text)

    def result(self, *, answered: bool) -> TransactionResult:
        """The outcome of every recipient, once each is decided."""
        done = tuple(o for o in self._outcomes if o is not None)
        assert len(done) == len(self.recipients), "a recipient was left undecided"
        final = self.final_reply
        remote_id = remote_id_of(final) if final is not None and final.is_positive else None
        return TransactionResult(
            done, final, remote_id, dsn_passed=self.dsn_passed, answered=answered
        )

    def _decide(self, indices: Sequence[int], reply: Reply) -> None:
        outcome = outcome_of_code(reply.code)
        for i in indices:
            self._outcomes[i] = RecipientOutcome(self.recipients[i], outcome, str(reply))


def open_message(path: Path) -> tuple[BinaryIO, bytes]:
    """Open the spooled message and read its first block: one thread hop for most mail."""
    message = path.open("rb")
    try:
        return message, message.read(MESSAGE_BLOCK_BYTES)
    except BaseException:
        message.close()
        raise


def verb_of(command: Command) -> str:
    """The command's verb as the dialogue names it: ``MAIL``, ``RCPT``, ``DATA``."""
    return type(command).__name__.upper()


def verbs(commands: Sequence[Command]) -> str:
    """ "MAIL, RCPT and DATA": each verb once, in order."""
    named = list(dict.fromkeys(verb_of(c) for c in commands))
    return named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"
