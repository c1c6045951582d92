"""Errors raised by the SMTP protocol core.

The server side never raises because of what a client sent: broken or hostile input becomes an
event that carries the reply to send (see `events`). Exceptions are kept for the two cases no
reply can mend, and both mean "drop the connection":

- `RemoteProtocolError`: the peer broke the protocol in a way the core cannot answer. Only the
  client side (`ClientConnection`) raises it: a malformed, oversized or unsolicited reply means
  the relay and the server no longer agree on where they are in the dialogue.
- `LocalProtocolError`: this program misused the API, e.g. sent a reply no command was waiting
  for, or a 354 to MAIL. It is a bug in the caller, never in the peer.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "RemoteProtocolError", "SMTPProtocolError"]


class SMTPProtocolError(ValueError):
    """The SMTP dialogue cannot continue; the connection should be dropped."""


class RemoteProtocolError(SMTPProtocolError):
    """The peer sent something that breaks the protocol (malformed or unsolicited reply)."""


class LocalProtocolError(SMTPProtocolError):
    """The caller used the connection object out of sequence (a bug in this program)."""
