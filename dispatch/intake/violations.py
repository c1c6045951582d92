"""Protocol violations at intake: what the protocol core ended a session for, logged and
counted (``dispatch_smtp_protocol_violations``, ``dispatch_smtp_wrong_protocol``; docs/smtp.md).

The session answers with the reply returned here, which closes the connection; it also
discards an open message after a bare line ending.
"""

from __future__ import annotations

import logging

from dispatch.monitoring.stats import Stats
from dispatch.smtp import Reply
from dispatch.smtp.events import BareLineEnding, UnsynchronisedPipelining, WrongProtocol

log = logging.getLogger("dispatch.smtp")


def note_violation(
    event: WrongProtocol | BareLineEnding | UnsynchronisedPipelining, peer_ip: str, stats: Stats
) -> Reply:
    """Log and count ``event`` from ``peer_ip``; the reply the core chose for it."""
    match event:
        case WrongProtocol(verb, reply):
            log.warning("%s command on the SMTP port from %s: closed", verb, peer_ip)
            stats.smtp_wrong_protocol.add(verb)
        case BareLineEnding(reply):
            log.warning("bare CR or LF in message data from %s: closed", peer_ip)
            stats.smtp_violations.add("bare_line_ending")
        case UnsynchronisedPipelining(after, octets, reply):
            # Unauthenticated only (the core's rule); BDAT is exempt. See docs/smtp.md.
            log.warning(
                "%d octets sent without waiting for the reply to %s from %s: closed",
                octets,
                after,
                peer_ip,
            )
            kind = "before_greeting" if after == "CONNECT" else "pipelining_after_data"
            stats.smtp_violations.add(kind)
    return reply
