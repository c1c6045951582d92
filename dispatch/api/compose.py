"""From the fields of ``POST /api/v1/messages`` to an envelope and a MIME message (SPEC §4).

Pure: no I/O, no clock (the caller passes ``now``). Three steps, one module each:

1. the request's shape: :class:`~dispatch.api.request.ComposeRequest`, read from a JSON body
   or form fields by the web layer (:mod:`dispatch.api.request`);
2. validation: every problem found, or the checked parts of the message
   (:mod:`dispatch.api.validation`, with :mod:`dispatch.api.mailboxes` for addresses and
   :mod:`dispatch.api.problems` for what a ``400`` lists);
3. MIME building: the parts as 7-bit bytes with CRLF line ends (:mod:`dispatch.api.mime`).

:func:`compose` runs steps 2 and 3 and either returns a :class:`Composed` (envelope facts
plus the message bytes, ready to spool) or raises one
:class:`~dispatch.api.problems.ValidationError` listing every problem found.
``Message-ID`` (``<random@message_id_domain>``) and ``Date`` (from ``now``, UTC) are added
unless the request's headers give them.

Cost: building is CPU work proportional to the body; for bodies of megabytes, call
:func:`compose` through ``trio.to_thread.run_sync`` (:mod:`dispatch.api.body` does).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import attrs

from dispatch.api.mime import build_message
from dispatch.api.request import ComposeRequest
from dispatch.api.validation import validate
from dispatch.smtp.addresses import valid_domain

__all__ = ["Composed", "compose"]


@attrs.frozen
class Composed:
    """A valid request, composed: the envelope facts and the message to spool."""

    mail_from: str  # the bare address of From
    recipients: tuple[str, ...]  # To + Cc + Bcc, bare, de-duplicated, in that order
    message: bytes = attrs.field(repr=lambda m: f"<{len(m)} bytes>")  # 7-bit, CRLF line ends
    tags: tuple[str, ...]
    subject: str
    message_id: str  # with its angle brackets

    @property
    def size(self) -> int:
        """Bytes of the message, for the caller's ``api.max_message_bytes`` re-check."""
        return len(self.message)


def compose(request: ComposeRequest, *, message_id_domain: str, now: float) -> Composed:
    """Validate ``request`` and build its message, or raise ``ValidationError``.

    ``message_id_domain`` is the right-hand side of generated Message-IDs (a host name of
    this server; a ``ValueError`` if it is not one); ``now`` (seconds since the epoch) is the
    default Date. Nothing else escapes: any input the request can hold is either composed or
    answered with the list of its problems.
    """
    if not (message_id_domain.isascii() and valid_domain(message_id_domain)):
        raise ValueError(f"message_id_domain {message_id_domain!r} is not a domain name")
    parts = validate(request)
    message_id = parts.message_id or f"<{secrets.token_hex(16)}@{message_id_domain}>"
    date = parts.date or datetime.fromtimestamp(now, UTC)
    message = build_message(parts, message_id=message_id, date=date)
    assert parts.sender is not None  # no problems, so from was found
    return Composed(
        mail_from=parts.sender.addr_spec,
        recipients=parts.recipients,
        message=message,
        tags=parts.tags,
        subject=parts.subject,
        message_id=message_id,
    )
