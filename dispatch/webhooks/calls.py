"""One webhook call over HTTP: the clients (one per trust store) and the POST itself.

:func:`post` sends an owed call's body with freshly signed headers and reports the status, or
why there is none; it never raises for anything the network or the receiver does. The
sender (``sender.py``) decides what the answer means (settled, retried, given up).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Final

import httpx
import trio

from dispatch.config.settings import WebhookSettings
from dispatch.webhooks import payload
from dispatch.webhooks.outbox import OwedCall

log = logging.getLogger("dispatch.webhooks")

MAX_ERROR_TEXT: Final = 300

type Client = httpx.AsyncClient | str
"""A client, or why none could be made (an unreadable ``ca_file``)."""


async def post(
    client: Client, hook: WebhookSettings, call: OwedCall
) -> tuple[int | None, str | None]:
    """POST the body; ``(status, None)`` for an answer, ``(None, why)`` for none. The
    response body is never read: only the status matters, whatever size it has.
    ``client`` is a string when none could be made (why: an unreadable ``ca_file``)."""
    if isinstance(client, str):
        return None, client
    timestamp = int(time.time())
    headers = payload.headers(
        secret=hook.secret.reveal(),
        timestamp=timestamp,
        body=call.body,
        event_id=call.event_id,
        kind=call.event,
        attempt=call.attempts,
    )
    with trio.move_on_after(hook.timeout_seconds):
        try:
            async with client.stream(
                "POST",
                hook.url,
                content=call.body,
                headers=headers,
                timeout=hook.timeout_seconds,
            ) as response:
                return response.status_code, None
        except httpx.TimeoutException:
            pass
        except Exception as exc:  # noqa: BLE001 - refused, reset, TLS, bad URL: retried
            return None, describe(exc)[:MAX_ERROR_TEXT]
    return None, f"no answer within {hook.timeout_seconds:g} s (timeout_seconds)"


def describe(exc: BaseException) -> str:
    """``ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] …``: httpx's errors often say nothing
    themselves; the exception they were raised from (the socket's, the TLS layer's) does."""
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 3:
        text = str(seen)
        if text and text not in texts:
            texts.append(text)
        seen = seen.__cause__ or seen.__context__
    return f"{type(exc).__name__}: {'; '.join(texts)}" if texts else type(exc).__name__


class Clients:
    """The HTTP clients of one run: one per trust store (a receiver's ``ca_file``; ``""``:
    httpx's default), made when a receiver first needs it, closed with ``stack``."""

    def __init__(self, stack: contextlib.AsyncExitStack) -> None:
        self._stack = stack
        self._clients: dict[str, Client] = {}

    async def prepare(self, hooks: Sequence[WebhookSettings]) -> None:
        for ca_file in {hook.ca_file for hook in hooks} - self._clients.keys():
            verify: ssl.SSLContext | bool = True
            if ca_file:
                try:
                    verify = await trio.to_thread.run_sync(_trusting, ca_file)
                except (OSError, ssl.SSLError) as exc:
                    self._clients[ca_file] = f"cannot load ca_file {ca_file}: {exc}"
                    log.error("webhooks: %s", self._clients[ca_file])
                    continue
            client = httpx.AsyncClient(follow_redirects=False, verify=verify)
            self._clients[ca_file] = await self._stack.enter_async_context(client)

    def get(self, ca_file: str) -> Client:
        """The client for ``ca_file``, or why there is none (the call fails and is retried
        by a later run, which tries to load the file again)."""
        return self._clients[ca_file]


def _trusting(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)
