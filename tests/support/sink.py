"""The one test SMTP upstream: an aiosmtpd server on 127.0.0.1 in a thread of its own.

A :class:`Sink` records every message it accepts as it arrived (`decode_data=False`: the
bytes after dot-unstuffing, nothing added), with the time it accepted it, and counts
connections (distinct peers that said EHLO/HELO). It offers PIPELINING (unless told not to),
STARTTLS or implicit TLS with a trustme certificate, AUTH, DSN (``dsn=True``: the RFC 3461
parameters are taken and recorded), and fails on demand:

- RCPT of ``reject…`` gets ``550``, of ``later…`` ``451``;
- the first ``handler.fail_data`` messages get ``451`` after DATA;
- ``rcpt_4xx`` / ``data_4xx``: the probability (seeded) of a ``451`` for any other recipient /
  for the whole message after DATA; :meth:`Sink.calm` sets both to 0.

The reliability suites mark each message with an ``X-Fault-Token`` header;
:attr:`Sink.deliveries` and :meth:`Sink.delivered` read accepted mail by token.

A test either starts one with the ``start_sink`` fixture (stopped at teardown) or builds
``Sink(...)`` itself and calls :meth:`Sink.stop`. The fixtures are registered for every test as
a pytest plugin (``-p tests.support.sink`` in pyproject.toml), so tests use them by name.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.conftest import free_port

DEFAULT_SIZE_LIMIT: Final = 33_554_432
TOKEN_HEADER: Final = "X-Fault-Token"
_TOKEN: Final = re.compile(rb"^X-Fault-Token: (\S+)\r?$", re.MULTILINE | re.IGNORECASE)


@attrs.frozen
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    mail_options: tuple[str, ...]
    tls: bool
    at: float  # time.monotonic() when the sink accepted it (before its 250 went out)
    token: str | None  # its X-Fault-Token header, if it has one


def token_of(content: bytes) -> str | None:
    """The ``X-Fault-Token`` header of a message, if it has one."""
    found = _TOKEN.search(content)
    return None if found is None else found.group(1).decode()


@attrs.frozen
class Delivery:
    """One recipient of one accepted message that carried a token."""

    token: str
    recipient: str
    at: float


class SinkHandler:
    """aiosmtpd hooks; runs in the sink's thread, the test reads what it recorded."""

    def __init__(
        self,
        *,
        pipelining: bool,
        data_delay: float,
        seed: int = 1,
        rcpt_4xx: float = 0.0,
        data_4xx: float = 0.0,
    ) -> None:
        self.pipelining = pipelining
        self.data_delay = data_delay
        self.rcpt_4xx = rcpt_4xx
        self.data_4xx = data_4xx
        self.fail_data = 0
        self.desync_data = 0  # answer this many messages with one reply too many
        self.messages: list[Received] = []
        self.refused = Counter[str]()  # refusals by kind ("rcpt 550", "rcpt 451", "data 451")
        self.peers: list[Any] = []
        self.auth: list[tuple[str, str]] = []  # (mechanism, login) of successful AUTHs
        self.quits = 0
        self.dsn = False  # offer DSN (RFC 3461): see DsnController
        self.rcpt_options: dict[str, tuple[str, ...]] = {}  # per recipient, as received
        self.data_started = threading.Event()
        self._random = random.Random(seed)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if session.peer not in self.peers:
            self.peers.append(session.peer)
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        if self.dsn:
            responses.insert(-1, "250-DSN")
        return responses

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        session.host_name = hostname
        if session.peer not in self.peers:
            self.peers.append(session.peer)
        return "250 sink.test"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.rcpt_options[address] = tuple(options)
        if address.startswith("reject"):
            self.refused["rcpt 550"] += 1
            return "550 5.1.1 no such user"
        if address.startswith("later") or self._random.random() < self.rcpt_4xx:
            self.refused["rcpt 451"] += 1
            return "451 4.3.0 try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_started.set()
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.fail_data > 0:
            self.fail_data -= 1
            return "451 4.3.0 try later"
        if self._random.random() < self.data_4xx:
            self.refused["data 451"] += 1
            return "451 4.3.0 try later"
        content = bytes(envelope.original_content)
        self.messages.append(
            Received(
                envelope.mail_from,
                tuple(envelope.rcpt_tos),
                content,
                tuple(envelope.mail_options),
                session.ssl is not None,
                time.monotonic(),
                token_of(content),
            )
        )
        reply = f"250 2.0.0 Ok: queued as Q{len(self.messages)}"
        if self.desync_data > 0:
            self.desync_data -= 1
            return f"{reply}\r\n250 2.0.0 one reply too many"
        return reply

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"

    def authenticate(
        self, users: dict[str, str], server: Any, session: Any, envelope: Any,
        mechanism: str, auth_data: Any,
    ) -> AuthResult:  # fmt: skip
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        if users.get(login) != password:
            return AuthResult(success=False, handled=False)
        self.auth.append((mechanism, login))
        return AuthResult(success=True)


_DSN_PARAMETERS: Final = ("RET", "ENVID", "NOTIFY", "ORCPT")


class _DsnSmtp(SMTP):
    """aiosmtpd refuses every MAIL and RCPT parameter it does not know; this one takes the
    DSN ones (RFC 3461), which stay in ``mail_options`` / the handler's ``rcpt_options``.
    aiosmtpd upper-cases parameters as it reads them."""

    def _getparams(self, params: Any) -> Any:
        result = super()._getparams(params)
        if result is not None:
            for key in _DSN_PARAMETERS:
                result.pop(key, None)
        return result


class _DsnController(Controller):
    def factory(self) -> SMTP:
        return _DsnSmtp(self.handler, **self.SMTP_kwargs)


class Sink:
    """A running aiosmtpd upstream on 127.0.0.1:``port`` (a free one unless given).

    It starts in the constructor and runs in its own thread until :meth:`stop`. ``tls`` needs
    ``tls_context`` (the ``start_sink`` fixture passes the ``pki`` one).
    """

    def __init__(
        self,
        *,
        tls: Literal["starttls", "implicit"] | None = None,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        users: dict[str, str] | None = None,
        auth_require_tls: bool = True,
        auth_exclude: tuple[str, ...] = (),
        pipelining: bool = True,
        smtputf8: bool = False,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        data_delay: float = 0.0,
        idle_timeout: float = 300.0,
        port: int | None = None,
        seed: int = 1,
        rcpt_4xx: float = 0.0,
        data_4xx: float = 0.0,
        dsn: bool = False,
    ) -> None:
        self.handler = SinkHandler(
            pipelining=pipelining,
            data_delay=data_delay,
            seed=seed,
            rcpt_4xx=rcpt_4xx,
            data_4xx=data_4xx,
        )
        kwargs: dict[str, Any] = {
            "decode_data": False,
            "enable_SMTPUTF8": smtputf8,
            "data_size_limit": size_limit,
            "timeout": idle_timeout,
            "server_hostname": "sink.test",
        }
        if tls is not None and tls_context is None:
            raise ValueError(f"a {tls} sink needs tls_context (the pki fixture's .server)")
        if tls == "starttls":
            kwargs.update(tls_context=tls_context, require_starttls=require_starttls)
        elif tls == "implicit":
            kwargs["ssl_context"] = tls_context
        if users is not None:
            kwargs.update(
                authenticator=partial(self.handler.authenticate, users),
                auth_require_tls=auth_require_tls,
                auth_exclude_mechanism=list(auth_exclude),
            )
        self.port = port or free_port()
        self.handler.dsn = dsn
        controller = _DsnController if dsn else Controller
        self.controller = controller(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()
        self.stopped = False

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    @property
    def connections(self) -> int:
        return len(self.handler.peers)

    @property
    def refused(self) -> Counter[str]:
        return self.handler.refused

    @property
    def deliveries(self) -> list[Delivery]:
        """Each recipient of each accepted message with a token, in the order accepted."""
        return [
            Delivery(received.token, recipient, received.at)
            for received in list(self.messages)
            if received.token is not None
            for recipient in received.rcpt_tos
        ]

    @property
    def unmarked(self) -> int:
        """Accepted messages without a token."""
        return sum(received.token is None for received in list(self.messages))

    def delivered(self) -> dict[str, dict[str, list[float]]]:
        """token -> recipient -> the times it was accepted."""
        result: dict[str, dict[str, list[float]]] = {}
        for delivery in self.deliveries:
            result.setdefault(delivery.token, {}).setdefault(delivery.recipient, []).append(
                delivery.at
            )
        return result

    def calm(self) -> None:
        """No more random refusals (``reject…`` and ``later…`` recipients still fail)."""
        self.handler.rcpt_4xx = self.handler.data_4xx = 0.0

    def stop(self) -> None:
        """Stop the sink (idempotent: the fixture stops it again at teardown)."""
        if not self.stopped:
            self.stopped = True
            self.controller.stop()


@attrs.frozen
class Pki:
    """A trustme CA, its PEM file (for ``ca_file``) and a server certificate context."""

    ca: trustme.CA
    ca_file: Path
    server: ssl.SSLContext

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "mx.example.test").configure_cert(server)
    return Pki(ca, ca_file, server)


StartSink = Callable[..., Sink]


@pytest.fixture
def start_sink(pki: Pki) -> Iterator[StartSink]:
    """``start_sink(tls=None|"starttls"|"implicit", users={...}, ...)`` → a running `Sink`
    (the keywords of :class:`Sink`; TLS uses the ``pki`` certificate unless told otherwise),
    stopped at teardown."""
    started: list[Sink] = []

    def start(*, tls_context: ssl.SSLContext | None = None, **options: Any) -> Sink:
        sink = Sink(tls_context=tls_context or pki.server, **options)
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()
