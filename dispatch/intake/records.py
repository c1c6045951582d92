"""The message-log events intake writes: ``received`` for an accepted message, ``denied`` for
a peer refused by an allow-list. Shared by the SMTP listener and the HTTP API."""

from __future__ import annotations

from dispatch.spool import Envelope
from dispatch.storage import MessageEvent, Source


def received(envelope: Envelope, *, subject: str | None) -> MessageEvent:
    """The ``received`` event of a message just committed to the spool."""
    return MessageEvent(
        message_id=envelope.id,
        event="received",
        at=envelope.received_at,
        source=None if envelope.source == "bounce" else envelope.source,
        peer_ip=envelope.peer_ip,
        sender=envelope.mail_from,
        recipients=envelope.recipients,
        subject=subject,
        size=envelope.size,
        tags=envelope.tags,
        api_key_prefix=envelope.auth_identity if envelope.source == "api" else None,
    )


def denied(source: Source, peer_ip: str, allow_list: str) -> MessageEvent:
    """A connection or request refused because ``peer_ip`` is not in ``allow_list``."""
    return MessageEvent(
        message_id=None,
        event="denied",
        source=source,
        peer_ip=peer_ip,
        response=f"peer not in {allow_list}",
    )
