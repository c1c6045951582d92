"""SMTP dialogue lines and TLS facts as trace events, for both directions.

The inbound session (`dispatch.intake.session`) and the relays' client session
(`dispatch.relays.smtp_session`) trace what was said: each command with its arguments
(``C: MAIL FROM:<a@example.test> SIZE=1234``) and each reply with its code, enhanced code and
every line of text (``S: 250 2.1.0 Ok``). Addresses and host names are shown: these pages are
the operator's. What must not be shown is redacted here, in one place: an AUTH command keeps
its mechanism but not its initial response, a SASL response line (RFC 4954 §4) is never
shown — both carry credentials (PLAIN's is the password, base64-encoded). Message data is
never traced, only its size.

Pure functions of the protocol core's values, no I/O: the sans-IO core (`dispatch.smtp`)
itself stays free of tracing. :class:`TlsFacts` reads a finished TLS handshake.
"""

from __future__ import annotations

import ipaddress
from typing import Final, TypeIs

import attrs
import trio

from dispatch.logs import printable
from dispatch.smtp import LocalProtocolError, Reply
from dispatch.smtp.events import (
    Auth,
    AuthResponse,
    Command,
    CommandError,
    Event,
    UnknownCommand,
    WrongProtocol,
)

REDACTED: Final = "<redacted>"


def command_line(
    event: Command | CommandError | UnknownCommand | WrongProtocol, wire: bytes | None = None
) -> str:
    """``C: …``: a command as the client sent it, credentials redacted.

    ``wire`` is the command's serialised form when the caller has it already (the relay's
    client just wrote it): it is shown as it went out, without serialising again. A command
    the core refused before it became an event (a syntax error, a verb it does not know) keeps
    only its verb: the core does not hand out the rejected line.
    """
    match event:
        case Auth(mechanism, initial_response):
            shown = "" if initial_response is None else f" {REDACTED}"
            return f"C: AUTH {printable(mechanism)}{shown}"
        case AuthResponse():
            return "C: * (AUTH cancelled)" if event.cancelled else f"C: {REDACTED} (AUTH response)"
        case CommandError(verb, _):
            return f"C: {verb} (refused as sent)"
        case UnknownCommand(verb, _):
            return f"C: {verb} (unknown command)"
        case WrongProtocol(verb, _):
            return f"C: {verb} (another protocol's command)"
        case _:
            return f"C: {_wire_text(event, wire)}"


def _wire_text(command: Command, wire: bytes | None) -> str:
    if wire is None:
        try:
            wire = command.serialise()
        except LocalProtocolError:  # a line break inside a value: never sent, show the verb
            return f"{type(command).__name__.upper()} (not sendable)"
    return printable(wire.removesuffix(b"\r\n").decode("utf-8", errors="replace"))


def reply_lines(reply: Reply) -> list[str]:
    """``S: …``: every line of a reply as on the wire (``250-first``, ``250 last``), escaped."""
    prefix = f"{reply.enhanced} " if reply.enhanced else ""
    last = len(reply.lines) - 1
    return [
        f"{'S: ' if i == 0 else '   '}{reply.code}{' ' if i == last else '-'}{prefix}"
        f"{printable(line)}"
        for i, line in enumerate(reply.lines)
    ]


def is_traced_command(
    event: Event,
) -> TypeIs[Command | CommandError | UnknownCommand | WrongProtocol]:
    """Whether ``event`` is something the client said (not message data or a core finding)."""
    return isinstance(event, Command | CommandError | UnknownCommand | WrongProtocol)


@attrs.frozen
class TlsFacts:
    """What a finished handshake agreed on, for a trace event.

    ``server_name`` is the SNI: the name the client asked for (inbound: ``None`` when it sent
    none) or the one Dispatch sent (outbound). ``verified``: outbound only, whether the
    server's certificate was checked against the trust store and that name.
    """

    version: str | None
    cipher: str | None
    bits: int | None
    server_name: str | None
    resumed: bool = False
    verified: bool | None = None

    @classmethod
    def of(
        cls,
        stream: trio.SSLStream[trio.abc.Stream],
        server_name: str | None,
        *,
        verified: bool | None = None,
    ) -> TlsFacts:
        cipher = stream.cipher()
        return cls(
            version=stream.version(),
            cipher=cipher[0] if cipher else None,
            bits=cipher[2] if cipher else None,
            server_name=server_name,
            resumed=bool(stream.session_reused),
            verified=verified,
        )

    def text(self) -> str:
        """``TLS established: TLSv1.3, TLS_AES_256_GCM_SHA384 (256 bits), SNI mail.test``."""
        parts = [self.version or "unknown version"]
        if self.cipher:
            parts.append(f"{self.cipher} ({self.bits} bits)" if self.bits else self.cipher)
        if not self.server_name:
            parts.append("no SNI")
        elif _is_ip_address(self.server_name):  # RFC 6066 §3: never sent for an address
            parts.append(f"no SNI (server {printable(self.server_name)} is an address)")
        else:
            parts.append(f"SNI {printable(self.server_name)}")
        if self.resumed:
            parts.append("session resumed")
        if self.verified is not None:
            parts.append("certificate verified" if self.verified else "certificate not verified")
        return "TLS established: " + ", ".join(parts)


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
