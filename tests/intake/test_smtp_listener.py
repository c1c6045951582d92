"""The SMTP listener, black-box: stdlib smtplib and raw sockets against 127.0.0.1."""

from __future__ import annotations

import functools
import os
import smtplib
import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

from dispatch.intake.balance import OpenCounts, make_counts_file
from dispatch.intake.listener import ACCEPT_BATCH, SmtpListener
from dispatch.monitoring.stats import CounterMap
from dispatch.security.certs import CertificateFiles
from dispatch.security.passwords import hash_password
from dispatch.spool import MessageState
from tests.conftest import free_port
from tests.intake.conftest import Smtpd, at_data, in_thread, raw, running_smtpd
from tests.support.waiting import wait_until_async

MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nHello.\r\n..dot\r\n"
USER, PASSWORD = "app", "correct horse battery staple"


def spooled(smtpd: Smtpd) -> list[bytes]:
    return [smtpd.spool.message_path(e.id).read_bytes() for e in smtpd.spool.entries()]


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def configure_user(smtpd: Smtpd) -> None:
    smtpd.configure(users=[{"username": USER, "password_hash": hash_password(PASSWORD)}])


async def test_plain_message_is_acknowledged_only_once_spooled(smtpd: Smtpd) -> None:
    def send() -> tuple[int, bytes]:
        with smtpd.client() as client:
            client.ehlo("client.example")
            client.mail("a@example.com")
            client.rcpt("b@example.org")
            client.rcpt("c@example.net")
            return client.data(MESSAGE)

    code, text = await in_thread(send)
    assert code == 250
    assert text.startswith(b"2.0.0 Ok: queued as spl_")
    message_id = text.split()[-1].decode()
    entry = smtpd.spool.get(message_id)
    assert entry is not None
    assert entry.state is MessageState.INCOMING
    assert entry.envelope.mail_from == "a@example.com"
    assert entry.envelope.recipients == ("b@example.org", "c@example.net")
    assert entry.envelope.source == "smtp"
    assert entry.envelope.peer_ip == "127.0.0.1"
    stored = smtpd.spool.message_path(message_id).read_bytes()
    header, _, body = stored.partition(b"From: a@example.com")  # our Received: comes first
    assert header.startswith(b"Received: from client.example ([127.0.0.1])")
    assert b"with ESMTP id " + message_id.encode() in header
    assert b"b@example.org" not in header
    assert b"From: a@example.com" + body == MESSAGE  # smtplib dot-stuffed, we unstuffed
    assert smtpd.stats.messages_received["smtp"] == 1
    (event,) = smtpd.events
    assert (event.event, event.message_id, event.subject) == ("received", message_id, "hi")
    assert event.recipients == ("b@example.org", "c@example.net")
    assert smtpd.stats.smtp_commands["MAIL"] == 1
    assert smtpd.stats.smtp_commands["RCPT"] == 2
    assert smtpd.stats.smtp_replies["250"] >= 4


async def test_starttls_then_auth_plain_and_login(smtpd: Smtpd) -> None:
    configure_user(smtpd)

    def send(mechanism: str) -> tuple[str, dict[str, tuple[int, bytes]]]:
        with smtpd.client() as client:
            client.ehlo("client.example")
            assert "auth" not in client.esmtp_features  # never before TLS
            client.starttls(context=smtpd.client_context())
            client.ehlo("client.example")
            assert "starttls" not in client.esmtp_features
            assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
            client.user, client.password = USER, PASSWORD
            authenticator = client.auth_plain if mechanism == "PLAIN" else client.auth_login
            code, _ = client.auth(mechanism, authenticator, initial_response_ok=False)
            assert code == 235
            assert isinstance(client.sock, ssl.SSLSocket)
            version = client.sock.version() or ""
            return version, client.sendmail("a@x.test", ["b@y.test"], MESSAGE)

    for mechanism in ("PLAIN", "LOGIN"):
        version, refused = await in_thread(functools.partial(send, mechanism))
        assert version in ("TLSv1.2", "TLSv1.3")
        assert refused == {}
    envelopes = [e.envelope for e in smtpd.spool.entries()]
    assert [e.auth_identity for e in envelopes] == [USER, USER]
    assert all(b"with ESMTPSA id" in m for m in spooled(smtpd))
    assert smtpd.stats.smtp_auth["success"] == 2
    assert smtpd.stats.smtp_sessions["tls"] == 2


async def test_auth_needs_tls_unless_allowed(smtpd: Smtpd) -> None:
    configure_user(smtpd)

    def attempt() -> tuple[int, bytes]:
        with smtpd.client() as client:
            client.ehlo()
            return client.docmd("AUTH", "PLAIN")

    code, text = await in_thread(attempt)
    assert code == 538
    assert text.startswith(b"5.7.11")
    smtpd.configure(allow_unsecure_auth=True)

    def login() -> int:
        with smtpd.client() as client:
            client.ehlo()
            assert "auth" in client.esmtp_features
            return client.login(USER, PASSWORD)[0]

    assert await in_thread(login) == 235


async def test_require_auth_refuses_mail_before_auth(smtpd: Smtpd) -> None:
    smtpd.configure(require_auth=True)

    def attempt() -> tuple[int, bytes]:
        with smtpd.client() as client:
            client.ehlo()
            return client.mail("a@example.com")

    assert (await in_thread(attempt))[0] == 530
    assert spooled(smtpd) == []


async def test_repeated_auth_failures_are_throttled(smtpd: Smtpd) -> None:
    configure_user(smtpd)
    smtpd.configure(allow_unsecure_auth=True)

    def attempt(password: str) -> int:
        with smtpd.client() as client:
            client.ehlo()
            client.user, client.password = USER, password
            # One mechanism only: login() would try the next mechanism after a failure.
            try:
                return client.auth("PLAIN", client.auth_plain, initial_response_ok=True)[0]
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code

    codes = [await in_thread(lambda: attempt("wrong")) for _ in range(3)]
    assert codes == [535, 535, 535]
    # Throttled now: even the right password is not looked at.
    assert await in_thread(lambda: attempt(PASSWORD)) == 454
    assert smtpd.stats.smtp_auth["failure"] == 3
    assert smtpd.stats.smtp_auth["throttled"] == 1


async def test_size_limit_at_mail_and_while_reading(smtpd: Smtpd) -> None:
    smtpd.configure(max_message_bytes=2000)

    def declared() -> tuple[int, bytes]:
        with smtpd.client() as client:
            client.ehlo()
            assert client.esmtp_features["size"] == "2000"
            return client.mail("a@example.com", ["SIZE=5000"])

    assert (await in_thread(declared))[0] == 552

    def undeclared() -> tuple[int, bytes]:
        with smtpd.client() as client:
            client.ehlo()
            client.esmtp_features.pop("size")  # so smtplib does not send SIZE=
            client.mail("a@example.com")
            client.rcpt("b@example.org")
            return client.data(MESSAGE + (b"x" * 70 + b"\r\n") * 50)

    code, text = await in_thread(undeclared)
    assert code == 552
    assert text.startswith(b"5.3.4")
    assert spooled(smtpd) == []


async def test_recipient_limit(smtpd: Smtpd) -> None:
    def send() -> list[int]:
        with smtpd.client() as client:
            client.ehlo()
            client.mail("a@example.com")
            codes = [client.rcpt(f"r{i}@example.org")[0] for i in range(101)]
            assert client.data(MESSAGE)[0] == 250
            return codes

    codes = await in_thread(send)
    assert codes[:100] == [250] * 100
    assert codes[100] == 452
    (entry,) = smtpd.spool.entries()
    assert len(entry.envelope.recipients) == 100


@pytest.mark.parametrize("ending", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r"])
async def test_smtp_smuggling_is_refused_and_closed(smtpd: Smtpd, ending: bytes) -> None:
    def smuggle() -> bytes:
        with at_data(smtpd.port) as sock:
            sock.sendall(
                b"Subject: one\r\n\r\nfirst" + ending + b"MAIL FROM:<evil@x.test>\r\n"
                b"RCPT TO:<victim@y.test>\r\nDATA\r\nSubject: smuggled\r\n\r\n.\r\n"
            )
            return read_all(sock)

    answer = await in_thread(smuggle)
    assert answer.splitlines()[-1].startswith(b"521 5.5.2 Bare CR or LF")
    assert b"queued" not in answer
    assert spooled(smtpd) == []


async def test_plaintext_pipelined_after_starttls_is_dropped(smtpd: Smtpd) -> None:
    def inject() -> bytes:
        with raw(smtpd.port) as sock:
            sock.sendall(b"EHLO x\r\n")
            sock.recv(4096)
            sock.sendall(b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n")
            return read_all(sock)

    answer = await in_thread(inject)
    assert answer.startswith(b"220 ")
    assert b"250" not in answer  # the injected MAIL was never answered


async def test_http_request_gets_502_and_close(smtpd: Smtpd) -> None:
    def http() -> bytes:
        with raw(smtpd.port) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            return read_all(sock)

    answer = await in_thread(http)
    assert answer.startswith(b"502 5.5.1")
    assert b"HTTP/1." not in answer
    assert smtpd.stats.smtp_wrong_protocol["GET"] == 1


async def test_peer_outside_allow_list_gets_554(
    smtpd: Smtpd, caplog: pytest.LogCaptureFixture
) -> None:
    smtpd.configure(allowed_cidrs=["127.0.0.2/32"])

    def connect() -> bytes:
        with socket.create_connection(("127.0.0.1", smtpd.port), timeout=10) as sock:
            return read_all(sock)

    assert (await in_thread(connect)).startswith(b"554 5.7.1")
    assert smtpd.stats.smtp_denied["allowlist"] == 1
    assert [(e.event, e.peer_ip) for e in smtpd.events] == [("denied", "127.0.0.1")]
    assert any("denied connection from 127.0.0.1" in r.getMessage() for r in caplog.records)
    smtpd.configure(allowed_cidrs=["127.0.0.1/32"])  # live: the next connection is let in

    def allowed() -> int:
        with smtpd.client() as client:
            return client.noop()[0]

    assert await in_thread(allowed) == 250


async def test_max_connections(smtpd: Smtpd) -> None:
    smtpd.configure(max_connections=2)
    first, second = await in_thread(smtpd.client), await in_thread(smtpd.client)
    try:
        await wait_until_async(lambda: smtpd.listener.open_sessions >= 2, within=5)

        def third() -> bytes:
            with socket.create_connection(("127.0.0.1", smtpd.port), timeout=10) as sock:
                return read_all(sock)

        assert (await in_thread(third)).startswith(b"421 4.3.2 Too many connections")
        assert smtpd.stats.smtp_denied["max_connections"] == 1
    finally:
        first.close()
        second.close()


async def test_idle_client_is_timed_out(smtpd: Smtpd) -> None:
    smtpd.configure(connection_timeout_seconds=0.3)

    def idle() -> bytes:
        with raw(smtpd.port) as sock:
            return read_all(sock)

    assert (await in_thread(idle)).startswith(b"421 4.4.2")


async def test_three_error_replies_end_the_session(smtpd: Smtpd) -> None:
    def errors() -> bytes:
        with raw(smtpd.port) as sock:
            sock.sendall(b"BOGUS\r\nRCPT TO:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\n")
            return read_all(sock)

    lines = (await in_thread(errors)).splitlines()
    assert [line[:3] for line in lines] == [b"500", b"503", b"503", b"421"]


async def test_mail_loop_is_refused(smtpd: Smtpd) -> None:
    looping = b"Received: from a by b; date\r\n" * 51 + MESSAGE

    def send() -> tuple[int, bytes]:
        with smtpd.client() as client:
            client.ehlo()
            client.mail("a@example.com")
            client.rcpt("b@example.org")
            return client.data(looping)

    code, text = await in_thread(send)
    assert code == 554
    assert text.startswith(b"5.4.6")
    assert smtpd.stats.smtp_loops.value == 1
    assert spooled(smtpd) == []


async def test_bdat_chunks_make_one_message(smtpd: Smtpd) -> None:
    part1, part2 = MESSAGE[:20], MESSAGE[20:]

    def send() -> bytes:
        with raw(smtpd.port) as sock:
            sock.sendall(b"EHLO x\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n")
            sock.sendall(b"BDAT %d\r\n" % len(part1) + part1)
            sock.sendall(b"BDAT %d LAST\r\n" % len(part2) + part2 + b"QUIT\r\n")
            return read_all(sock)

    answer = await in_thread(send)
    assert b"250 2.0.0 Ok: queued as spl_" in answer
    (stored,) = spooled(smtpd)
    assert stored.endswith(MESSAGE)  # BDAT is not dot-stuffed: ".." stays ".."


async def test_shutdown_says_421_and_discards_the_partial_message(smtpd: Smtpd) -> None:
    sock = await in_thread(lambda: at_data(smtpd.port))
    try:
        await in_thread(lambda: sock.sendall(b"Subject: half"))
        await trio.sleep(0.2)  # the DATA is being received
        smtpd.shutdown.request()
        answer = await in_thread(lambda: read_all(sock))
    finally:
        sock.close()
    assert answer.splitlines()[-1].startswith(b"421 4.3.2")
    assert b"queued" not in answer
    assert spooled(smtpd) == []
    assert list((smtpd.root / "tmp").iterdir()) == []


async def test_a_message_committed_during_shutdown_still_gets_its_250(
    spool_dir: Path, tls_files: tuple[trustme.CA, CertificateFiles]
) -> None:
    # The commit waits for the spool's only thread while the shutdown cancels the session:
    # the commit runs to its end once the thread is free, and its 250 goes out before the 421.
    port, limiter, holder = free_port(), trio.CapacityLimiter(1), object()
    live = {"connection_timeout_seconds": 10, "ports": [port]}
    async with running_smtpd(spool_dir, tls_files, live, {"smtp": port}, limiter=limiter) as smtpd:
        await limiter.acquire_on_behalf_of(holder)
        sock = await in_thread(lambda: at_data(smtpd.port))
        try:
            await in_thread(lambda: sock.sendall(MESSAGE + b".\r\n"))
            await wait_until_async(
                lambda: limiter.statistics().tasks_waiting == 1, what="the commit waits"
            )
            smtpd.shutdown.request()
            await trio.sleep(0.2)  # the session is cancelled while its commit waits
            limiter.release_on_behalf_of(holder)
            answer = await in_thread(lambda: read_all(sock))
        finally:
            sock.close()
        replies = answer.splitlines()
        assert replies[0].startswith(b"250 2.0.0 Ok: queued as spl_"), answer
        assert replies[-1].startswith(b"421 4.3.2"), answer
        assert len(spooled(smtpd)) == 1


async def test_counters_do_not_carry_addresses(smtpd: Smtpd) -> None:
    def send() -> None:
        with smtpd.client() as client:
            client.sendmail("secret-sender@example.com", ["secret-rcpt@example.org"], MESSAGE)
            client.docmd("XYZZY\x01\x02" + "A" * 100)

    await in_thread(send)
    maps = [counter for counter in smtpd.stats.all() if isinstance(counter, CounterMap)]
    labels = [key for counter in maps for key in counter.values]
    assert not any("example" in str(label) for label in labels)
    assert all(str(label).isalnum() and len(str(label)) <= 16 for label in labels)


def listening_descriptors(port: int) -> int:
    """How many of this process's descriptors refer to the socket listening on ``port``."""
    sockets = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
            sockets.add(f"socket:[{fields[9]}]")
    links = [os.readlink(fd) for fd in Path("/proc/self/fd").iterdir() if fd.is_symlink()]
    return sum(link in sockets for link in links)


async def test_connections_waiting_together_are_all_served(smtpd: Smtpd) -> None:
    """More connections than one wake-up accepts (ACCEPT_BATCH) queue while the loop is
    busy; every one of them is greeted."""
    count = ACCEPT_BATCH + 36
    smtpd.configure(max_connections=count + 10, max_connections_per_ip=count + 10)
    # Connected without yielding: the kernel completes them all before the listener runs.
    socks = [socket.create_connection(("127.0.0.1", smtpd.port), timeout=10) for _ in range(count)]
    try:
        greetings = await in_thread(lambda: [sock.recv(1024) for sock in socks])
        assert all(greeting.startswith(b"220 ") for greeting in greetings)
        assert smtpd.listener.open_sessions == count
    finally:
        for sock in socks:
            sock.close()


async def test_stopping_closes_the_descriptor_it_accepted_on(smtpd: Smtpd) -> None:
    # The listener accepts through a duplicate of the listening descriptor: two while it runs,
    # none once it stopped (a leaked duplicate would keep the port bound).
    assert listening_descriptors(smtpd.port) == 2
    await in_thread(lambda: raw(smtpd.port).close())  # the accepting task has run its loop
    smtpd.shutdown.request()
    await wait_until_async(lambda: listening_descriptors(smtpd.port) == 0, within=5)


@pytest.fixture
def counts_fd() -> Iterator[int]:
    """A counts file for two intake workers (intake/balance.py)."""
    fd = make_counts_file(2)
    yield fd
    os.close(fd)


def as_workers(smtpd: Smtpd, counts_fd: int) -> SmtpListener:
    """Make the fixture's listener intake worker 0 of two on ``counts_fd`` and return a second
    one, worker 1, for the same context and sockets (both run in the test's process)."""
    smtpd.listener.processes = 2
    smtpd.listener.counts = OpenCounts(counts_fd, 0)
    return SmtpListener(
        smtpd.listener.context, smtpd.listener.ports, processes=2, counts=OpenCounts(counts_fd, 1)
    )


def held(counts_fd: int) -> tuple[int, ...]:
    """What the counts file says each of the two workers holds."""
    return struct.unpack("2i", os.pread(counts_fd, 8, 0))


def connect(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, made without yielding: every listener wakes to all of them."""
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]


async def test_connections_that_stay_are_spread_evenly_over_the_workers(
    smtpd: Smtpd, counts_fd: int
) -> None:
    """Each worker takes what it lacks of its share of all the connections held and waiting:
    the first to wake to a burst does not take it all (intake/balance.py)."""
    other = as_workers(smtpd, counts_fd)
    async with trio.open_nursery() as nursery:
        await nursery.start(other.serve, smtpd.sockets, smtpd.shutdown)
        socks = connect(smtpd.port, 20)
        try:
            greetings = await in_thread(lambda: [sock.recv(1024) for sock in socks])
            assert all(greeting.startswith(b"220 ") for greeting in greetings)
            assert (smtpd.listener.open_sessions, other.open_sessions) == (10, 10)
            # Ten more, once the first twenty are held: again half each.
            socks += connect(smtpd.port, 10)
            greetings = await in_thread(lambda: [sock.recv(1024) for sock in socks[20:]])
            assert all(greeting.startswith(b"220 ") for greeting in greetings)
            assert (smtpd.listener.open_sessions, other.open_sessions) == (15, 15)
            assert held(counts_fd) == (15, 15)
        finally:
            for sock in socks:
                sock.close()
        # Closed connections leave the counts: a new burst is shared from zero again.
        await wait_until_async(lambda: held(counts_fd) == (0, 0))
        smtpd.shutdown.request()  # both listeners stop


async def test_a_worker_holding_its_share_still_takes_what_a_busy_one_leaves(
    smtpd: Smtpd, counts_fd: int
) -> None:
    """The other worker runs but does not come to the socket (busy, or stuck; here: never
    serving): what waits is still served, one connection per short deferral."""
    as_workers(smtpd, counts_fd)
    socks = connect(smtpd.port, 20)
    try:
        greetings = await in_thread(lambda: [sock.recv(1024) for sock in socks])
        assert all(greeting.startswith(b"220 ") for greeting in greetings)
        assert smtpd.listener.open_sessions == 20
    finally:
        for sock in socks:
            sock.close()
