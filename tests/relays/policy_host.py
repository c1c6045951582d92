"""A loopback HTTPS server standing in for ``mta-sts.<domain>`` (RFC 8461 §3.3).

:func:`policy_host` serves one answer (status, content type, body) over TLS with a trustme
certificate for the names it is given, on 127.0.0.1 and a free port, until its block ends.
It records the ``Host`` header, the SNI name and the path of every request, so that a test
can see that the relay asked the right host for the right file. It speaks just enough
HTTP/1.1 for one request per connection (``Connection: close``).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial

import attrs
import trio
import trustme


@attrs.define
class PolicyHost:
    port: int = 0
    status: int = 200
    content_type: str = "text/plain"
    body: str = ""
    content_length: bool = True  # False: the body ends when the connection closes
    requests: list[tuple[str, str, str]] = attrs.Factory(list)  # (sni, host, path)

    def serve(
        self,
        body: str,
        *,
        status: int = 200,
        content_type: str = "text/plain",
        content_length: bool = True,
    ) -> None:
        self.body, self.status, self.content_type = body, status, content_type
        self.content_length = content_length


def policy_text(mode: str, *mx: str, max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {pattern}" for pattern in mx)]
    return "\r\n".join([*lines, f"max_age: {max_age}", ""])


@asynccontextmanager
async def policy_host(ca: trustme.CA, *names: str) -> AsyncIterator[PolicyHost]:
    """Serve until the block ends; the certificate names ``names``."""
    host = PolicyHost()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    sni_seen: list[str] = []

    def remember_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni_seen.append(name or "")

    context.sni_callback = remember_sni

    async def answer(stream: trio.SSLStream[trio.SocketStream]) -> None:
        request = b""
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while b"\r\n\r\n" not in request:
                data = await stream.receive_some(4096)
                if not data:
                    return
                request += data
            head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            fields = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])
            }
            host.requests.append((sni_seen[-1] if sni_seen else "", fields.get("host", ""), path))
            body = host.body.encode()
            length = f"Content-Length: {len(body)}\r\n" if host.content_length else ""
            reply = (
                f"HTTP/1.1 {host.status} X\r\nContent-Type: {host.content_type}\r\n"
                f"{length}Connection: close\r\n\r\n"
            ).encode() + body
            await stream.send_all(reply)
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_ssl_over_tcp, answer, 0, context, host="127.0.0.1")
        )
        host.port = listeners[0].transport_listener.socket.getsockname()[1]
        yield host
        nursery.cancel_scope.cancel()
