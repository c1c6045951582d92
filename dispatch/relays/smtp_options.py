"""The terms of one outbound SMTP session: the server and how to reach it, the deadlines of
each wait, and the error a session reports when it cannot go on.

Shared by the relays that speak SMTP (`dispatch.relays.smarthost`, `dispatch.relays.mx`) and
the connection and session themselves (`dispatch.relays.smtp_connection`,
`dispatch.relays.smtp_session`). Values only; nothing here does I/O.
"""

from __future__ import annotations

import ssl
from typing import Final, Literal

import attrs

from dispatch.monitoring.stats import CounterMap
from dispatch.relays.base import Outcome
from dispatch.smtp import ClientLimits

__all__ = [
    "SessionError",
    "SessionOptions",
    "Timeouts",
    "TlsMode",
    "why_not_connected",
]

# none: never TLS; opportunistic: STARTTLS when offered, else plaintext; required: STARTTLS or
# a transient failure; implicit: TLS from the first byte (RFC 8314 §3.3, "submissions").
TlsMode = Literal["none", "opportunistic", "required", "implicit"]

# RFC 5321 §4.5.3.2 minimum client timeouts, in seconds.
RFC_GREETING: Final = 300.0  # §4.5.3.2.1 initial 220
RFC_MAIL: Final = 300.0  # §4.5.3.2.2 (also used for EHLO, STARTTLS, AUTH, RSET)
RFC_RCPT: Final = 300.0  # §4.5.3.2.3
RFC_DATA_INIT: Final = 120.0  # §4.5.3.2.4 the 354
RFC_DATA_BLOCK: Final = 180.0  # §4.5.3.2.5 each write of message data
RFC_DATA_END: Final = 600.0  # §4.5.3.2.6 the reply to the final "."
# The final reply gets this multiple of the relay's timeout (capped by the RFC's 10 minutes,
# never below the timeout itself): the server may be scanning or writing the message, and
# giving up there is what duplicates mail (RFC 5321 §4.5.3.2.6, §6.1).
DATA_END_FACTOR: Final = 5.0


@attrs.frozen
class Timeouts:
    """How long each wait of a session may take, in seconds."""

    connect: float
    greeting: float
    command: float  # EHLO, STARTTLS and its handshake, AUTH, RSET
    mail: float
    rcpt: float
    data_init: float
    data_block: float
    data_end: float

    @classmethod
    def scaled(cls, timeout_seconds: float) -> Timeouts:
        """The relay's ``timeout_seconds`` caps every RFC 5321 §4.5.3.2 value, except the
        wait for the final reply, which gets ``DATA_END_FACTOR`` times it (see above)."""
        t = timeout_seconds
        return cls(
            connect=t,
            greeting=min(RFC_GREETING, t),
            command=min(RFC_MAIL, t),
            mail=min(RFC_MAIL, t),
            rcpt=min(RFC_RCPT, t),
            data_init=min(RFC_DATA_INIT, t),
            data_block=min(RFC_DATA_BLOCK, t),
            data_end=max(t, min(RFC_DATA_END, DATA_END_FACTOR * t)),
        )


@attrs.frozen
class SessionOptions:
    """Everything a session needs to know about the server it talks to.

    ``address`` is what is connected to (a host name or an IP address); ``tls_server_name``
    is the name the certificate is checked against and sent as SNI; ``display`` names the
    server in error texts and ``label`` names the relay ("relay primary").
    """

    label: str
    address: str
    port: int
    tls_server_name: str
    display: str
    helo_name: str
    tls: TlsMode
    ssl_context: ssl.SSLContext | None
    timeouts: Timeouts
    username: str = ""
    password: str = attrs.field(default="", repr=False)
    # Only when the operator explicitly chose tls = "none": send credentials in the clear.
    auth_without_tls: bool = False
    limits: ClientLimits = attrs.Factory(ClientLimits)
    # chasquid's smtpOut/tlsCount: each connection's TLS status (see SmtpConnection._open).
    tls_count: CounterMap | None = attrs.field(default=None, eq=False, repr=False)


class SessionError(Exception):
    """The session could not be set up, or broke: every pending recipient gets ``outcome``.

    ``detail`` says what failed; ``text`` prefixes it with the relay's label, for the log.
    ``tls_failure`` is True when TLS could not be set up: the handshake failed (a caller
    doing opportunistic TLS may then try again in plaintext) or, with ``tls = "required"``,
    STARTTLS was not offered or refused; ``verify_failure`` when the handshake failed because
    the certificate did not verify (a caller may try again without verification).
    ``timed_out`` is True when a wait ran out of time —
    one of the :class:`Timeouts`, or the operating system's own connect timeout — rather
    than being refused or broken: the server may be hung, and a relay may stop sending it
    more work for a while (see `dispatch.relays.suspension`).
    """

    def __init__(
        self,
        outcome: Outcome,
        label: str,
        detail: str,
        *,
        tls_failure: bool = False,
        verify_failure: bool = False,
        timed_out: bool = False,
    ) -> None:
        super().__init__(f"{label}: {detail}")
        self.outcome: Outcome = outcome
        self.detail = detail
        self.text = f"{label}: {detail}"
        self.tls_failure = tls_failure
        self.verify_failure = verify_failure
        self.timed_out = timed_out


def why_not_connected(exc: OSError) -> tuple[str, bool]:
    """ "refused", "failed: ..." out of trio's "all attempts to connect failed" error, and
    whether an attempt timed out (the operating system's own connect timeout, ETIMEDOUT)."""
    causes: list[BaseException] = [exc]
    group = exc.__cause__
    if isinstance(group, BaseExceptionGroup):
        causes = list(group.exceptions)
    timed_out = any(isinstance(cause, TimeoutError) for cause in causes)
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return "refused", timed_out
    first = causes[-1]
    if isinstance(first, OSError) and first.strerror:
        return f"failed: {first.strerror}", timed_out
    return f"failed: {first}", timed_out
