"""The ``mailgun`` relay: each message handed to Mailgun's HTTP API as raw MIME.

Theory of operation: :meth:`MailgunRelayClient.deliver` borrows one of ``max_inflight``
tokens, then sends ``POST {base_url}/v3/{domain}/messages.mime`` as multipart/form-data
(RFC 7578) with the spooled ``.eml`` as the ``message`` file field — streamed from disk in
chunks by httpx, so its bytes reach Mailgun exactly as stored — and one ``to`` field per
envelope recipient (Mailgun delivers to those, not to the header's addresses). Auth is HTTP
Basic with user ``api`` and the relay's ``api_key`` (RFC 7617). The answer's ``id`` is the
remote id recorded in the message log.

Outcome mapping (whole message; Mailgun gives no per-recipient result on send):

* 200: ``delivered`` (Mailgun has queued it).
* 400, 413 and other 4xx not listed below: ``permanent`` — Mailgun refuses this message as
  it is, and sending it again would be refused again.
* 401, 403, 404: ``transient`` — a wrong key or domain is the relay's configuration, not the
  message's fault; mail waits, with a text saying what to fix, until a reload fixes it.
* 408, 429, 5xx, timeouts and connection errors: ``transient``. A ``Retry-After`` (seconds
  or an HTTP date, RFC 9110 §10.2.3) on 429 or 503 holds every delivery through this relay
  until then: they fail fast as ``transient`` without contacting Mailgun.

Ownership and stopping: the relay owns one :class:`httpx.AsyncClient` (its connection
pool); :meth:`MailgunRelayClient.aclose` closes it. Cancelling a delivery closes its request
stream; Mailgun either got the whole multipart body or nothing it will accept.
"""

from __future__ import annotations

import json
import logging
import math
from typing import IO, Final

import httpx
import trio

from dispatch.config.settings import MailgunRelay
from dispatch.relays.base import DeliveryRequest, DeliveryResult, Outcome, dialogue_trace
from dispatch.relays.retry_after import retry_after_seconds

__all__ = ["EU_BASE_URL", "US_BASE_URL", "MailgunRelayClient", "outcome_of_status"]

log = logging.getLogger("dispatch.relays.mailgun")

US_BASE_URL: Final = "https://api.mailgun.net"
EU_BASE_URL: Final = "https://api.eu.mailgun.net"

_CONFIGURATION: Final = frozenset({401, 403, 404})
_TRY_LATER: Final = frozenset({408, 429})


def outcome_of_status(status: int) -> Outcome:
    """How one Mailgun HTTP status decides the message (see the module docstring)."""
    if 200 <= status < 300:
        return "delivered"
    if status >= 500 or status in _TRY_LATER or status in _CONFIGURATION:
        return "transient"
    return "permanent"


def _reason(response: httpx.Response) -> str:
    """Mailgun's ``message`` from an error body, else the start of the body."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return response.text[:200].strip() or response.reason_phrase


class MailgunRelayClient:
    """A configured ``kind = "mailgun"`` relay (implements `dispatch.relays.base.Relay`).

    Counters for monitoring, plain ints: ``inflight``, ``delivered`` and ``failed`` (per
    attempt, as the smtp relay counts them).
    """

    kind: str = "mailgun"

    def __init__(self, settings: MailgunRelay, *, verify: bool | str = True) -> None:
        """``verify`` is httpx's TLS verification (a CA bundle path in tests). Raises
        ValueError for settings that cannot work (no key, no domain, a bad base URL)."""
        self.name = settings.name
        self.settings = settings
        self.inflight = 0
        self.delivered = 0
        self.failed = 0
        key = settings.api_key.reveal()
        if not key:
            raise ValueError(
                f"relay {self.name}: mailgun needs api_key (or api_key_env / api_key_file)"
            )
        if not settings.domain or "/" in settings.domain:
            raise ValueError(f"relay {self.name}: mailgun needs domain, e.g. mg.example.org")
        base = settings.base_url.rstrip("/")
        if not base.startswith(("https://", "http://")):
            raise ValueError(
                f"relay {self.name}: base_url {settings.base_url!r} must start with https:// "
                f"({US_BASE_URL}, or {EU_BASE_URL} for EU domains)"
            )
        self.url = f"{base}/v3/{settings.domain}/messages.mime"
        self._limiter = trio.CapacityLimiter(settings.max_inflight)
        self._hold_until = 0.0  # trio time before which Mailgun asked us not to come back
        self._hold_reason = ""
        self._client = httpx.AsyncClient(
            auth=httpx.BasicAuth("api", key),
            timeout=httpx.Timeout(settings.timeout_seconds),
            limits=httpx.Limits(max_connections=settings.max_inflight),
            verify=verify,
            headers={"User-Agent": "Dispatch mailgun relay"},
        )

    def _held(self) -> str | None:
        if trio.current_time() < self._hold_until:
            left = math.ceil(self._hold_until - trio.current_time())
            return f"relay {self.name}: {self._hold_reason}; waiting {left}s as Mailgun asked"
        return None

    async def deliver(self, request: DeliveryRequest) -> DeliveryResult:
        """One delivery attempt: one HTTP request (see the module docstring)."""
        if (why := self._held()) is not None:
            self.failed += 1
            return DeliveryResult.all(request, "transient", why)
        async with self._limiter:
            self.inflight += 1
            try:
                with dialogue_trace(request, f"relay {self.name} → {self.url}") as dialogue:
                    result = await self._post(request)
                    if dialogue is not None:
                        line = result.outcomes[0].response if result.outcomes else ""
                        failed = any(o.outcome != "delivered" for o in result.outcomes)
                        (dialogue.error if failed else dialogue.event)(line)
            finally:
                self.inflight -= 1
        if any(o.outcome == "delivered" for o in result.outcomes):
            self.delivered += 1
        if any(o.outcome != "delivered" for o in result.outcomes):
            self.failed += 1
        return result

    async def _post(self, request: DeliveryRequest) -> DeliveryResult:
        if (why := self._held()) is not None:
            return DeliveryResult.all(request, "transient", why)
        try:
            message = await trio.to_thread.run_sync(open, request.message_path, "rb")
        except OSError as exc:
            return DeliveryResult.all(
                request, "transient", f"relay {self.name}: cannot read the spooled message: {exc}"
            )
        try:
            response = await self._send(request, message)
        except httpx.TimeoutException:
            limit = self.settings.timeout_seconds
            text = f"relay {self.name}: Mailgun did not answer within {limit:g}s"
            return DeliveryResult.all(request, "transient", text)
        except httpx.HTTPError as exc:
            text = f"relay {self.name}: cannot reach {self.url}: {exc or type(exc).__name__}"
            return DeliveryResult.all(request, "transient", text)
        finally:
            message.close()
        return self._judge(request, response)

    async def _send(self, request: DeliveryRequest, message: IO[bytes]) -> httpx.Response:
        # httpx reads the file in 64 KiB chunks while sending: the message is never whole in
        # memory. One `to` field per recipient, as Mailgun's form takes repeated fields.
        data = {"to": list(request.recipients)}
        files = {"message": ("message.eml", message, "message/rfc822")}
        return await self._client.post(self.url, data=data, files=files)

    def _judge(self, request: DeliveryRequest, response: httpx.Response) -> DeliveryResult:
        status = response.status_code
        outcome = outcome_of_status(status)
        if outcome == "delivered":
            try:
                remote_id = str(response.json().get("id") or "") or None
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                remote_id = None
            text = f"{status} queued by Mailgun as {remote_id or '(no id)'}"
            return DeliveryResult(DeliveryResult.all(request, outcome, text).outcomes, remote_id)
        reason = _reason(response)
        text = f"relay {self.name}: Mailgun answered {status}: {reason}"
        if status in (401, 403):
            text += " (check the relay's api_key: Mailgun's private API key)"
        elif status == 404:
            text += f" (check the relay's domain {self.settings.domain!r} and base_url region)"
        if status in (429, 503):
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait:
                self._hold_until = trio.current_time() + wait
                self._hold_reason = f"Mailgun answered {status}"
                text += f"; retry after {math.ceil(wait)}s"
        log.debug("%s", text)
        return DeliveryResult.all(request, outcome, text)

    async def aclose(self) -> None:
        """Close the HTTP connection pool. Idempotent."""
        await self._client.aclose()
