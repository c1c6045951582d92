"""The ``postmark`` relay: each message handed to Postmark's ``POST /email`` as JSON fields.

Theory of operation: :meth:`PostmarkRelayClient.deliver` borrows one of ``max_inflight``
tokens, reads the spooled ``.eml`` and maps it to Postmark's fields in a worker thread
(`dispatch.relays.postmark_mapping`), then posts ``{base_url}/email`` with
``X-Postmark-Server-Token``, ``Accept`` and ``Content-Type: application/json`` and the
relay's ``MessageStream``. The answer's ``MessageID`` is the remote id recorded in the
message log. A message whose To header names no envelope recipient is posted once per
recipient (see the mapping module), and each recipient gets its own outcome.

Outcome mapping (Postmark answers errors as ``{"ErrorCode": n, "Message": "…"}``):

* 200 with ``ErrorCode`` 0: ``delivered``.
* 401, or ``ErrorCode`` 10 (bad or missing server token), 400/401 (sender signature not
  found / not confirmed), 405 (account may not send), 412 (account pending), 1235 (message
  stream not found): ``transient`` — the relay's or account's configuration, not the
  message, is wrong; mail waits, with a text saying what to fix, until it is fixed.
* Any other 422 (``ErrorCode`` 300 invalid email request, 406 inactive recipient, …) and
  other 4xx: ``permanent`` — Postmark refuses this message as it is.
* 429, 5xx, timeouts and connection errors: ``transient``. A ``Retry-After`` on 429 or 503
  holds every delivery through this relay until then (they fail fast as ``transient``).

Ownership and stopping: the relay owns one :class:`httpx.AsyncClient` (its connection
pool); :meth:`PostmarkRelayClient.aclose` closes it. Cancelling a delivery abandons its
request; Postmark got the whole JSON body or nothing.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Final

import httpx
import trio

from dispatch.config.settings import PostmarkRelay
from dispatch.relays.base import (
    DeliveryRequest,
    DeliveryResult,
    Outcome,
    RecipientOutcome,
    dialogue_trace,
)
from dispatch.relays.postmark_mapping import PostmarkMessage, map_message
from dispatch.relays.retry_after import retry_after_seconds

__all__ = ["DEFAULT_BASE_URL", "PostmarkRelayClient", "outcome_of"]

log = logging.getLogger("dispatch.relays.postmark")

DEFAULT_BASE_URL: Final = "https://api.postmarkapp.com"

# ErrorCodes that name the account's or relay's configuration (see the module docstring).
_CONFIGURATION: Final = {
    10: "check the relay's api_key: the Postmark server token",
    400: "add or confirm a sender signature for the From address in Postmark",
    401: "confirm the sender signature for the From address in Postmark",
    405: "the Postmark account may not send (credits, or suspended)",
    412: "the Postmark account is pending approval",
    1235: "check the relay's message_stream",
}


def outcome_of(status: int, error_code: int | None) -> Outcome:
    """How one Postmark answer decides the message (see the module docstring)."""
    if 200 <= status < 300 and not error_code:
        return "delivered"
    if status >= 500 or status == 429 or status == 401 or error_code in _CONFIGURATION:
        return "transient"
    return "permanent"


def _error(response: httpx.Response) -> tuple[int | None, str]:
    """Postmark's ``ErrorCode`` and ``Message`` from a body, else the start of the body."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        code = body.get("ErrorCode")
        text = body.get("Message")
        if isinstance(code, int) and isinstance(text, str):
            return code, text
    return None, response.text[:200].strip() or response.reason_phrase


def _read_and_map(path: Path, recipients: tuple[str, ...], stream: str) -> PostmarkMessage:
    return map_message(path.read_bytes(), recipients, stream)


class PostmarkRelayClient:
    """A configured ``kind = "postmark"`` relay (implements `dispatch.relays.base.Relay`).

    Counters for monitoring, plain ints: ``inflight``, ``delivered`` and ``failed`` (per
    attempt, as the smtp relay counts them).
    """

    kind: str = "postmark"

    def __init__(self, settings: PostmarkRelay, *, verify: bool | str = True) -> None:
        """``verify`` is httpx's TLS verification. Raises ValueError for settings that
        cannot work (no server token, a bad base URL, no message stream)."""
        self.name = settings.name
        self.settings = settings
        self.inflight = 0
        self.delivered = 0
        self.failed = 0
        token = settings.api_key.reveal()
        if not token:
            raise ValueError(
                f"relay {self.name}: postmark needs api_key (the server token; or "
                "api_key_env / api_key_file)"
            )
        if not settings.message_stream:
            raise ValueError(f"relay {self.name}: postmark needs message_stream, e.g. outbound")
        base = settings.base_url.rstrip("/")
        if not base.startswith(("https://", "http://")):
            raise ValueError(
                f"relay {self.name}: base_url {settings.base_url!r} must start with https:// "
                f"(e.g. {DEFAULT_BASE_URL})"
            )
        self.url = f"{base}/email"
        self._limiter = trio.CapacityLimiter(settings.max_inflight)
        self._hold_until = 0.0  # trio time before which Postmark asked us not to come back
        self._hold_reason = ""
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_seconds),
            limits=httpx.Limits(max_connections=settings.max_inflight),
            verify=verify,
            headers={
                "X-Postmark-Server-Token": token,
                "Accept": "application/json",
                "User-Agent": "Dispatch postmark relay",
            },
        )

    def _held(self) -> str | None:
        if trio.current_time() < self._hold_until:
            left = math.ceil(self._hold_until - trio.current_time())
            return f"relay {self.name}: {self._hold_reason}; waiting {left}s as Postmark asked"
        return None

    async def deliver(self, request: DeliveryRequest) -> DeliveryResult:
        """One delivery attempt: one HTTP request per body (see the module docstring)."""
        if (why := self._held()) is not None:
            self.failed += 1
            return DeliveryResult.all(request, "transient", why)
        async with self._limiter:
            self.inflight += 1
            try:
                with dialogue_trace(request, f"relay {self.name} → {self.url}") as dialogue:
                    result = await self._attempt(request)
                    if dialogue is not None:
                        for o in result.outcomes:
                            failed = o.outcome != "delivered"
                            (dialogue.error if failed else dialogue.event)(
                                f"{o.recipient}: {o.response}"
                            )
            finally:
                self.inflight -= 1
        if any(o.outcome == "delivered" for o in result.outcomes):
            self.delivered += 1
        if any(o.outcome != "delivered" for o in result.outcomes):
            self.failed += 1
        return result

    async def _attempt(self, request: DeliveryRequest) -> DeliveryResult:
        stream = self.settings.message_stream
        try:
            mapped = await trio.to_thread.run_sync(
                _read_and_map, request.message_path, request.recipients, stream
            )
        except OSError as exc:
            text = f"relay {self.name}: cannot read the spooled message: {exc}"
            return DeliveryResult.all(request, "transient", text)
        outcomes: list[RecipientOutcome] = []
        remote_ids: list[str] = []
        for body, covered in mapped.bodies():
            outcome, text, remote_id = await self._post(body)
            outcomes.extend(RecipientOutcome(r, outcome, text) for r in covered)
            if remote_id:
                remote_ids.append(remote_id)
        return DeliveryResult(tuple(outcomes), ", ".join(remote_ids) or None)

    async def _post(self, body: dict[str, object]) -> tuple[Outcome, str, str | None]:
        if (why := self._held()) is not None:
            return "transient", why, None
        try:
            response = await self._client.post(self.url, json=body)
        except httpx.TimeoutException:
            limit = self.settings.timeout_seconds
            return (
                "transient",
                f"relay {self.name}: Postmark did not answer within {limit:g}s",
                None,
            )
        except httpx.HTTPError as exc:
            text = f"relay {self.name}: cannot reach {self.url}: {exc or type(exc).__name__}"
            return "transient", text, None
        return self._judge(response)

    def _judge(self, response: httpx.Response) -> tuple[Outcome, str, str | None]:
        status = response.status_code
        code, reason = _error(response)
        outcome = outcome_of(status, code)
        if outcome == "delivered":
            try:
                remote_id = str(response.json().get("MessageID") or "") or None
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                remote_id = None
            return outcome, f"{status} accepted by Postmark as {remote_id or '(no id)'}", remote_id
        shown = f"{status} ErrorCode {code}" if code is not None else str(status)
        text = f"relay {self.name}: Postmark answered {shown}: {reason}"
        if code in _CONFIGURATION:
            text += f" ({_CONFIGURATION[code]})"
        elif status == 401:
            text += f" ({_CONFIGURATION[10]})"
        if status in (429, 503):
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait:
                self._hold_until = trio.current_time() + wait
                self._hold_reason = f"Postmark answered {status}"
                text += f"; retry after {math.ceil(wait)}s"
        log.debug("%s", text)
        return outcome, text, None

    async def aclose(self) -> None:
        """Close the HTTP connection pool. Idempotent."""
        await self._client.aclose()
