"""The ``ses`` relay: each message handed to Amazon SES (API v2) as raw MIME.

Theory of operation: :meth:`SesRelayClient.deliver` borrows one of ``max_inflight`` tokens,
then sends SESv2 ``SendEmail`` — ``POST {base_url}/v2/email/outbound-emails`` — with
``Content.Raw.Data`` the base64 of the spooled ``.eml`` (its bytes exactly as stored),
``Destination.ToAddresses`` the envelope's recipients (SES delivers to that list, not to the
header's addresses), ``FromEmailAddress`` the envelope sender (omitted for the null reverse
path: SES then takes the ``From`` header) and ``ConfigurationSetName`` when configured. SES
takes at most 50 destinations per call, so a message with more recipients is sent in calls
of 50, each with its own outcome. The request is signed with AWS Signature Version 4 by
botocore's signer (``botocore.auth.SigV4Auth`` over an ``AWSRequest`` built from the exact
body and headers sent; service ``ses``). Reading, encoding and signing run in a worker
thread: a message may be tens of megabytes. The answer's ``MessageId`` is the remote id
recorded in the message log.

Credentials: ``access_key_id`` + ``secret_access_key`` (+ ``session_token``) from the
settings (each also as ``*_env`` / ``*_file``), else the standard AWS environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) read by
botocore's ``EnvProvider`` when the relay is built (at start and on each reload).

Outcome mapping (whole call; SES gives one result per call, not per recipient), by the
error code (``x-amzn-ErrorType`` header or the body's ``__type``/``code``), else the status:

* 200: ``delivered`` (SES accepted it for sending).
* ``MessageRejected`` (content refused, or an unverified sender), ``MailFromDomainNotVerified
  Exception``, ``BadRequestException`` and other 4xx not listed below: ``permanent`` — this
  message, as it is, would be refused again.
* ``TooManyRequestsException``, ``LimitExceededException`` (rate or daily quota),
  ``ThrottlingException``, 429 and 5xx, timeouts and connection errors: ``transient``; a
  ``Retry-After`` (RFC 9110 §10.2.3) holds every delivery through this relay until then.
* ``AccountSuspendedException``, ``SendingPausedException``, ``NotFoundException`` (no such
  configuration set) and the signature and credential errors (403s, ``InvalidSignature
  Exception``, ``UnrecognizedClientException``, ``ExpiredTokenException`` …): ``transient``
  — the account or the relay's configuration is at fault, not the message; mail waits, with
  a text saying what to fix, until it is fixed (or its retries run out).

Ownership and stopping: the relay owns one :class:`httpx.AsyncClient` (its connection
pool); :meth:`SesRelayClient.aclose` closes it. Cancelling a delivery drops its request; SES
either got the whole signed body or nothing it will accept.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path
from typing import Final

import attrs
import httpx
import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, EnvProvider

from dispatch.config.settings import SesRelay
from dispatch.relays.base import (
    DeliveryRequest,
    DeliveryResult,
    Outcome,
    RecipientOutcome,
    dialogue_trace,
)
from dispatch.relays.retry_after import retry_after_seconds

__all__ = ["SesRelayClient", "outcome_of_error"]

log = logging.getLogger("dispatch.relays.ses")

MAX_DESTINATIONS: Final = 50  # SES: recipients per SendEmail call
MAX_RAW_BYTES: Final = 40 * 1024 * 1024  # SES: a message, after base64 encoding

_THROTTLED: Final = frozenset(
    {"TooManyRequestsException", "LimitExceededException", "ThrottlingException", "Throttling"}
)
_ACCOUNT: Final = {
    "AccountSuspendedException": "the SES account is suspended for sending; see the AWS console",
    "SendingPausedException": "sending is paused for the account or the configuration set",
    "NotFoundException": "check the relay's configuration_set and region",
}
_CREDENTIALS: Final = frozenset(
    {
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "ExpiredToken",
        "AccessDeniedException",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
    }
)


def outcome_of_error(status: int, code: str) -> Outcome:
    """How one SES answer decides the message (see the module docstring)."""
    if 200 <= status < 300:
        return "delivered"
    if code in _THROTTLED or code in _ACCOUNT or code in _CREDENTIALS:
        return "transient"
    if status >= 500 or status in (403, 408, 429):
        return "transient"
    return "permanent"


def _ascii_address(address: str) -> str:
    """SES takes ASCII addresses: an internationalised domain goes as IDNA (punycode)."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return address  # SES refuses it with a clear BadRequestException


def credentials_of(settings: SesRelay) -> Credentials:
    """The relay's keys, or the AWS environment's; ValueError naming what to set if none."""
    if settings.access_key_id:
        return Credentials(
            settings.access_key_id.reveal(),
            settings.secret_access_key.reveal(),
            settings.session_token.reveal() or None,
        )
    found = EnvProvider().load()
    frozen = None if found is None else found.get_frozen_credentials()
    if frozen is None or not frozen.access_key or not frozen.secret_key:
        raise ValueError(
            f"relay {settings.name}: no AWS credentials: set access_key_id and "
            "secret_access_key (or their _env / _file forms), or export AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        )
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


@attrs.frozen
class _Call:
    """One signed ``SendEmail`` call, ready to send: its recipients, body and headers."""

    recipients: tuple[str, ...]
    body: bytes
    headers: dict[str, str]


@attrs.frozen
class _Answer:
    outcome: Outcome
    text: str
    message_id: str | None = None


class SesRelayClient:
    """A configured ``kind = "ses"`` relay (implements `dispatch.relays.base.Relay`).

    Counters for monitoring, plain ints: ``inflight``, ``delivered`` and ``failed`` (per
    attempt, as the smtp relay counts them).
    """

    kind: str = "ses"

    def __init__(self, settings: SesRelay, *, verify: bool | str = True) -> None:
        """``verify`` is httpx's TLS verification (a CA bundle path in tests). Raises
        ValueError for settings that cannot work (no credentials, a bad base URL)."""
        self.name = settings.name
        self.settings = settings
        self.inflight = 0
        self.delivered = 0
        self.failed = 0
        self._credentials = credentials_of(settings)
        base = (settings.base_url or f"https://email.{settings.region}.amazonaws.com").rstrip("/")
        if not base.startswith(("https://", "http://")):
            raise ValueError(
                f"relay {self.name}: base_url {settings.base_url!r} must start with https:// "
                "(or be empty for https://email.<region>.amazonaws.com)"
            )
        self.url = f"{base}/v2/email/outbound-emails"
        self._limiter = trio.CapacityLimiter(settings.max_inflight)
        self._hold_until = 0.0  # trio time before which SES asked us not to come back
        self._hold_reason = ""
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_seconds),
            limits=httpx.Limits(max_connections=settings.max_inflight),
            verify=verify,
            headers={"User-Agent": "Dispatch ses relay"},
        )

    def _held(self) -> str | None:
        if trio.current_time() < self._hold_until:
            left = math.ceil(self._hold_until - trio.current_time())
            return f"relay {self.name}: {self._hold_reason}; waiting {left}s as SES asked"
        return None

    async def deliver(self, request: DeliveryRequest) -> DeliveryResult:
        """One delivery attempt: one signed call per 50 recipients (module docstring)."""
        if (why := self._held()) is not None:
            self.failed += 1
            return DeliveryResult.all(request, "transient", why)
        async with self._limiter:
            self.inflight += 1
            try:
                with dialogue_trace(request, f"relay {self.name} → {self.url}") as dialogue:
                    result = await self._deliver(request)
                    if dialogue is not None:
                        for outcome in result.outcomes[::MAX_DESTINATIONS]:
                            note = (
                                dialogue.event if outcome.outcome == "delivered" else dialogue.error
                            )
                            note(outcome.response)
            finally:
                self.inflight -= 1
        if any(o.outcome == "delivered" for o in result.outcomes):
            self.delivered += 1
        if any(o.outcome != "delivered" for o in result.outcomes):
            self.failed += 1
        return result

    async def _deliver(self, request: DeliveryRequest) -> DeliveryResult:
        try:
            calls = await trio.to_thread.run_sync(self._prepare, request)
        except OSError as exc:
            text = f"relay {self.name}: cannot read the spooled message: {exc}"
            return DeliveryResult.all(request, "transient", text)
        except ValueError as exc:  # too large for SES
            return DeliveryResult.all(request, "permanent", str(exc))
        outcomes: list[RecipientOutcome] = []
        ids: list[str] = []
        for call in calls:
            answer = await self._send(call)
            outcomes += [RecipientOutcome(r, answer.outcome, answer.text) for r in call.recipients]
            if answer.message_id:
                ids.append(answer.message_id)
        return DeliveryResult(tuple(outcomes), " ".join(ids) or None)

    def _prepare(self, request: DeliveryRequest) -> list[_Call]:
        """Read, encode and sign (in a worker thread): one call per 50 recipients."""
        raw = base64.b64encode(Path(request.message_path).read_bytes()).decode("ascii")
        if len(raw) > MAX_RAW_BYTES:
            raise ValueError(
                f"relay {self.name}: the message is {len(raw)} bytes after base64 encoding; "
                f"SES takes at most {MAX_RAW_BYTES} (40 MB)"
            )
        recipients = request.recipients
        return [
            self._signed(request.mail_from, recipients[i : i + MAX_DESTINATIONS], raw)
            for i in range(0, len(recipients), MAX_DESTINATIONS)
        ]

    def _signed(self, mail_from: str, recipients: tuple[str, ...], raw: str) -> _Call:
        payload: dict[str, object] = {
            "Destination": {"ToAddresses": [_ascii_address(r) for r in recipients]},
            "Content": {"Raw": {"Data": raw}},
        }
        if mail_from:
            payload["FromEmailAddress"] = _ascii_address(mail_from)
        if self.settings.configuration_set:
            payload["ConfigurationSetName"] = self.settings.configuration_set
        body = json.dumps(payload).encode("ascii")
        aws = AWSRequest(
            method="POST", url=self.url, data=body, headers={"Content-Type": "application/json"}
        )
        SigV4Auth(self._credentials, "ses", self.settings.region).add_auth(aws)
        return _Call(recipients, body, {k: str(v) for k, v in aws.headers.items()})

    async def _send(self, call: _Call) -> _Answer:
        if (why := self._held()) is not None:
            return _Answer("transient", why)
        try:
            response = await self._client.post(self.url, content=call.body, headers=call.headers)
        except httpx.TimeoutException:
            seconds = self.settings.timeout_seconds
            return _Answer(
                "transient", f"relay {self.name}: SES did not answer within {seconds:g}s"
            )
        except httpx.HTTPError as exc:
            text = f"relay {self.name}: cannot reach {self.url}: {exc or type(exc).__name__}"
            return _Answer("transient", text)
        return self._judge(response)

    def _judge(self, response: httpx.Response) -> _Answer:
        status = response.status_code
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        body = body if isinstance(body, dict) else {}
        if 200 <= status < 300:
            message_id = str(body.get("MessageId") or "") or None
            return _Answer(
                "delivered", f"{status} sent by SES as {message_id or '(no id)'}", message_id
            )
        code = _error_code(response, body)
        reason = str(body.get("message") or body.get("Message") or "").strip()
        reason = reason or response.text[:200].strip() or response.reason_phrase
        outcome = outcome_of_error(status, code)
        text = f"relay {self.name}: SES answered {status} {code or '(no error code)'}: {reason}"
        if code in _ACCOUNT:
            text += f" ({_ACCOUNT[code]})"
        elif code in _CREDENTIALS or status == 403:
            text += " (check the relay's AWS credentials, region and the host's clock)"
        if request_id := response.headers.get("x-amzn-RequestId"):
            text += f" [request {request_id}]"
        if status in (429, 503) or code in _THROTTLED:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait:
                self._hold_until = trio.current_time() + wait
                self._hold_reason = f"SES answered {status} {code}".rstrip()
                text += f"; retry after {math.ceil(wait)}s"
        log.debug("%s", text)
        return _Answer(outcome, text)

    async def aclose(self) -> None:
        """Close the HTTP connection pool. Idempotent."""
        await self._client.aclose()


def _error_code(response: httpx.Response, body: dict[str, object]) -> str:
    """The AWS error code: ``x-amzn-ErrorType`` (``Code:uri``), else the body's ``__type``
    (``namespace#Code``) or ``code``; empty when the answer names none."""
    raw = response.headers.get("x-amzn-ErrorType") or str(
        body.get("__type") or body.get("code") or body.get("Code") or ""
    )
    return raw.partition(":")[0].rpartition("#")[2].strip()
