"""DKIM signing on the way out (RFC 6376; Ed25519 per RFC 8463), with dkimpy.

Theory of operation: an ``mx`` or ``smtp`` relay with ``dkim_sign = true`` (the default)
calls :meth:`DkimSigner.signature` at the start of each delivery attempt, before it connects,
so one signature serves every exchanger, address and reconnection of that attempt. The signer
keeps the last :data:`REMEMBERED` messages' signatures by message id (the spooled bytes of a
message never change), so a retry, or a failover relay, sends the signature made the first
time: a message is signed once. The key is the
``[[dkim]]`` key of the ``From:`` header's domain (what DMARC aligns with, RFC 7489 §3.1.1),
else of a parent domain, else of the envelope sender's domain or a parent; a message none of
them covers goes unsigned (not an error: that domain has no key). The session then sends the
returned ``DKIM-Signature:`` header as bytes in front of the spooled message
(`dispatch.relays.smtp_session`): the message itself is never parsed into objects or
re-serialised, and the spool file is not changed.

Signing reads the whole message and hashes it, so it runs in a worker thread. Headers are
canonicalised ``relaxed`` (RFC 6376 §3.4.2: survives the refolding some relays do), the body
``simple`` (§3.4.3): Dispatch sends the body exactly as stored, with CRLF line ends, so
nothing on our side changes it, while dkimpy's relaxed body canonicalisation (regular
expressions over the whole body, holding the GIL) takes seconds for a large message.
Measured on this (shared, 2-core) machine with :func:`sign_message`: Ed25519 0.3 ms for
10 kB, 18 ms for 25 MiB; RSA 2048 15 ms for 10 kB (the private-key operation, which dkimpy
does in pure Python), 54 ms for 25 MiB. With a relaxed body, 25 MiB took 5 s.

A signing failure (a message dkimpy cannot parse, a key it refuses) never holds mail back: the
message goes unsigned, with a warning naming the message and ``dkimSignErrors`` counted.
Deferring instead would not help: the same bytes fail the same way at every retry, and an
unsigned message is what every sender without DKIM delivers. Keys are checked when the
daemon starts (`dispatch.security.dkim_keys.load_key`), so a failure here is about one
message, not the configuration.
"""

from __future__ import annotations

import email.utils
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import dkim
import trio

from dispatch.config.settings import DkimKey
from dispatch.monitoring.stats import Stats
from dispatch.relays.base import DeliveryRequest
from dispatch.security.dkim_keys import SigningKey, load_key

__all__ = ["CANONICALIZATION", "DkimSigner", "sign_message"]

log = logging.getLogger("dispatch.dkim")

# Signatures kept for retries: a few hundred bytes each, so about 2 MB at most.
REMEMBERED: Final = 4096

# RFC 6376 §3.4: relaxed header, simple body (see the module docstring for why).
CANONICALIZATION: Final = (b"relaxed", b"simple")


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(".").lower() if "@" in address else ""


def _from_domains(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The domains of the ``From:`` header's addresses (RFC 5322 §3.6.2: one or more)."""
    for name, value in headers:
        if name.strip().lower() == b"from":
            text = value.decode("utf-8", "replace")
            return [d for _, a in email.utils.getaddresses([text]) if (d := _domain_of(a))]
    return []


def _with_parents(domain: str) -> Iterable[str]:
    """``mail.example.com``, ``example.com``: a key for a parent signs its subdomains."""
    labels = domain.split(".")
    for i in range(len(labels) - 1):
        yield ".".join(labels[i:])


def choose_key(
    keys: dict[str, SigningKey], from_domains: Sequence[str], mail_from: str
) -> SigningKey | None:
    """The key of the first From domain (or parent) that has one, else the envelope
    sender's domain (or parent); None when no key covers the message."""
    for domain in [*from_domains, _domain_of(mail_from)]:
        for candidate in _with_parents(domain):
            if (key := keys.get(candidate)) is not None:
                return key
    return None


def sign_message(
    message: bytes, keys: dict[str, SigningKey], mail_from: str
) -> tuple[SigningKey | None, bytes]:
    """The key chosen and the ``DKIM-Signature:`` header (CRLF-terminated) for ``message``;
    ``(None, b"")`` when no key covers it. Raises what dkimpy raises for a message or key it
    cannot sign with. CPU-bound: call it from a worker thread."""
    # dkimpy parses a message with one regular-expression split of all of it, which holds
    # the GIL (stalling the event loop) for half a second at 25 MiB: it is handed the header
    # section only, and the body (CRLF lines, as spooled) is set as it is.
    end = message.find(b"\r\n\r\n")
    head, body = (message, b"") if end < 0 else (message[: end + 4], message[end + 4 :])
    signer = dkim.DKIM(head, linesep=b"\r\n")
    if end >= 0:
        signer.body = body
    key = choose_key(keys, _from_domains(signer.headers), mail_from)
    if key is None:
        return None, b""
    header: bytes = signer.sign(
        key.selector.encode("ascii"),
        key.domain.encode("ascii"),
        key.private,
        signature_algorithm=key.signature_algorithm,
        canonicalize=CANONICALIZATION,
    )
    if not header.endswith(b"\r\n"):
        header += b"\r\n"
    return key, header


class DkimSigner:
    """The keys of ``[[dkim]]`` by domain, and the counters they move; shared by every
    signing relay (built once by the composition root; keys change at a restart)."""

    def __init__(self, keys: Sequence[SigningKey], stats: Stats) -> None:
        self.keys = {key.domain: key for key in keys}
        self._stats = stats
        # message id → its header (b"" when no key covers it); the oldest forgotten first.
        self._made: OrderedDict[str, bytes] = OrderedDict()

    @classmethod
    def load(cls, settings: Sequence[DkimKey], stats: Stats) -> DkimSigner:
        """Read every configured key (at start-up: blocking file reads). Raises
        `DkimKeyError` naming the ``dkim[i]`` key and what to do."""
        keys = [
            load_key(
                key.domain,
                key.selector,
                Path(key.private_key_file),
                where=f"dkim[{i}].private_key_file",
            )
            for i, key in enumerate(settings)
        ]
        for key in keys:
            log.info(
                "DKIM: signing mail from %s with %s (%s)",
                key.domain,
                key.record_name,
                key.algorithm,
            )
        return cls(keys, stats)

    async def signature(self, request: DeliveryRequest, label: str) -> bytes:
        """The header to send before the message, or ``b""`` (no key for its domains, or
        signing failed: see the module docstring). ``label`` names the relay in warnings."""
        if not self.keys:
            return b""
        if (made := self._made.get(request.message_id)) is not None:
            self._made.move_to_end(request.message_id)
            if made and request.trace is not None:
                request.trace.event("DKIM-signed: the signature made at its first attempt")
            return made
        try:
            key, header = await trio.to_thread.run_sync(
                self._sign_file, request.message_path, request.content, request.mail_from
            )
        except Exception as exc:  # noqa: BLE001 - any failure: deliver unsigned, say why
            self._stats.dkim_sign_errors.add()
            log.warning(
                "%s: message %s goes unsigned: DKIM signing failed: %s",
                label,
                request.message_id,
                exc,
            )
            if request.trace is not None:
                request.trace.error(f"DKIM signing failed, sent unsigned: {exc}")
            return b""
        self._made[request.message_id] = header
        if len(self._made) > REMEMBERED:
            self._made.popitem(last=False)
        if key is not None:
            self._stats.dkim_signed.add()
            log.debug("%s: signed %s as %s", label, request.message_id, key.record_name)
            if request.trace is not None:
                request.trace.event(
                    f"DKIM-signed: d={key.domain} s={key.selector} ({key.algorithm})"
                )
        return header

    def _sign_file(
        self, path: Path, content: bytes | None, mail_from: str
    ) -> tuple[SigningKey | None, bytes]:
        """Sign ``content`` (the bytes the relay will send) or, without it, the file's."""
        message = path.read_bytes() if content is None else content
        return sign_message(message, self.keys, mail_from)
