"""Errors raised by the SMTP protocol core.

The server side never raises because of what a client sent: broken or hostile input becomes an
event that carries the reply to send (see `events`). Exceptions are kept for the two cases no
reply can mend, and both mean "drop the connection":

- `RemoteProtocolError`: the peer broke the protocol in a way the core cannot answer. Only the
  client side (`ClientConnection`) raises it: a malformed, oversized or unsolicited reply, or
  one of a class that makes no sense for its command (`UnexpectedReply`), means the relay and
  the server no longer agree on where they are in the dialogue.
- `LocalProtocolError`: this program misused the API, e.g. sent a reply no command was waiting
  for, a 354 to MAIL, or (client side) RCPT before MAIL. It is a bug in the caller, never in
  the peer, and it is raised before any byte is produced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .replies import Reply

__all__ = ["LocalProtocolError", "RemoteProtocolError", "SMTPProtocolError", "UnexpectedReply"]


class SMTPProtocolError(ValueError):
    """The SMTP dialogue cannot continue; the connection should be dropped."""


class RemoteProtocolError(SMTPProtocolError):
    """The peer sent something that breaks the protocol (malformed or unsolicited reply)."""


class LocalProtocolError(SMTPProtocolError):
    """The caller used the connection object out of sequence (a bug in this program)."""


class UnexpectedReply(RemoteProtocolError):
    """A well-formed reply whose class makes no sense for the command it answers (a 354 to
    MAIL, a 250 to DATA, a 3xx to the end of data). `command` names what it answered ("MAIL",
    "the end of data"); `reply` is the reply as received."""

    def __init__(self, command: str, reply: Reply) -> None:
        super().__init__(f"unexpected reply to {command}: {reply}")
        self.command = command
        self.reply = reply
