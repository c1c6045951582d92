"""The sans-IO SMTP protocol core: bytes in, typed events out, replies and commands out as bytes.

No sockets, no Trio, no files. `ServerConnection` is the inbound listener's side of a session,
`ClientConnection` the outbound relay's; both share the buffer, the events and the replies.
Module map: `buffer` (line framing), `commands` and `addresses` (command syntax), `_state`
(both sides' state table, and which events take a reply), `data` (message text and
transparency), `replies` (the `Reply` value and the standard replies), `auth` (SASL
PLAIN/LOGIN), `extensions` (the EHLO reply).
"""

from . import events, replies
from ._state import AWAITS_REPLY, State, awaits_reply
from .client import ClientConnection
from .errors import LocalProtocolError, RemoteProtocolError, SMTPProtocolError, UnexpectedReply
from .events import NEED_DATA, PAUSED, Flow
from .extensions import Extensions
from .limits import ClientLimits, Limits
from .replies import Reply
from .server import ServerConnection

__all__ = [
    "AWAITS_REPLY",
    "NEED_DATA",
    "PAUSED",
    "ClientConnection",
    "ClientLimits",
    "Extensions",
    "Flow",
    "Limits",
    "LocalProtocolError",
    "RemoteProtocolError",
    "Reply",
    "SMTPProtocolError",
    "ServerConnection",
    "State",
    "UnexpectedReply",
    "awaits_reply",
    "events",
    "replies",
]
