"""Unsynchronised pipelining is refused for unauthenticated clients (RFC 2920 §3.1, RFC 5321
§4.3.1), as Postfix's ``smtpd_forbid_unauth_pipelining`` does; correct clients, BDAT and
authenticated sessions are served as before. Black-box, over raw sockets to the real listener.

A command sent before the greeting is made deterministic here: the test connects and sends on
the event loop's own thread (blocking calls, on purpose), so the in-process listener cannot
accept the connection before the bytes are there.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from dispatch.security.passwords import hash_password
from dispatch.smtp import replies
from tests.conftest import free_port
from tests.delivery.harness import running_dispatch
from tests.intake.conftest import Smtpd, in_thread
from tests.support.config import base_config
from tests.system.faults import metric

ENVELOPE = b"EHLO c.example\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n"
MESSAGE = b"Subject: pipelined\r\n\r\nhello\r\n.\r\n"


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    return data


def talk_first(port: int) -> socket.socket:
    """Connect and send a command without reading the greeting. Blocking: call it on the
    event loop's thread, so that the listener only accepts once the bytes have arrived."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"EHLO early.example\r\n")
    return sock


def pipeline_past_data(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(1024)  # the greeting: this client waits for that one
        sock.sendall(ENVELOPE + b"DATA\r\n" + MESSAGE + b"QUIT\r\n")
        return read_all(sock)


def spooled(smtpd: Smtpd) -> list[Path]:
    return list((smtpd.root / "incoming").glob("*.eml"))


async def test_a_command_before_the_greeting_is_refused_and_closed(smtpd: Smtpd) -> None:
    sock = talk_first(smtpd.port)
    answer = await in_thread(lambda: read_all(sock))
    assert answer.startswith(b"554 5.5.0 Error: SMTP protocol synchronization"), answer
    assert answer.count(b"\r\n") == 1  # no greeting, and the EHLO was never served
    assert smtpd.stats.smtp_violations["before_greeting"] == 1
    assert smtpd.stats.smtp_commands["EHLO"] == 0


async def test_a_message_sent_before_the_354_is_refused_and_nothing_stored(
    smtpd: Smtpd,
) -> None:
    answer = await in_thread(lambda: pipeline_past_data(smtpd.port))
    codes = [line[:3] for line in answer.splitlines()]
    assert answer.endswith(replies.SYNC_AFTER_DATA.serialise()), answer
    assert b"354" not in codes
    assert b"221" not in codes  # the QUIT after the message was never read
    assert spooled(smtpd) == []
    assert smtpd.stats.smtp_violations["pipelining_after_data"] == 1


async def test_a_body_after_a_refused_data_is_not_read_as_commands(smtpd: Smtpd) -> None:
    # DATA without a recipient is refused; a lenient server would then run the "body" as
    # commands: here a whole second transaction.
    injected = (
        b"RCPT TO:<victim@example.test>\r\nDATA\r\nSubject: injected\r\n\r\nx\r\n.\r\nQUIT\r\n"
    )

    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", smtpd.port), timeout=10) as sock:
            sock.recv(1024)
            sock.sendall(b"EHLO c.example\r\nMAIL FROM:<a@example.test>\r\nDATA\r\n" + injected)
            return read_all(sock)

    answer = await in_thread(send)
    assert answer.splitlines()[-1].startswith(b"554 5.5.0"), answer
    assert b"queued" not in answer
    assert spooled(smtpd) == []


async def test_authenticated_clients_may_pipeline_past_data(smtpd: Smtpd) -> None:
    smtpd.configure(
        allow_unsecure_auth=True,
        users=[{"username": "alice", "password_hash": hash_password("secret")}],
    )
    plain = base64.b64encode(b"\0alice\0secret")

    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", smtpd.port), timeout=10) as sock:
            sock.recv(1024)
            sock.sendall(b"EHLO c.example\r\nAUTH PLAIN " + plain + b"\r\n")
            replies = b""
            while b"235 " not in replies:
                replies += sock.recv(4096)
            sock.sendall(
                b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
                + MESSAGE
                + b"QUIT\r\n"
            )
            return read_all(sock)

    answer = await in_thread(send)
    assert b"250 2.0.0 Ok: queued as" in answer, answer
    assert answer.endswith(b"221 2.0.0 Bye\r\n")
    assert len(spooled(smtpd)) == 1
    assert sum(smtpd.stats.smtp_violations.values.values()) == 0


async def test_bdat_is_exempt(smtpd: Smtpd) -> None:
    body = MESSAGE[:-3]

    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", smtpd.port), timeout=10) as sock:
            sock.recv(1024)
            sock.sendall(ENVELOPE + b"BDAT %d LAST\r\n" % len(body) + body + b"QUIT\r\n")
            return read_all(sock)

    answer = await in_thread(send)
    assert b"250 2.0.0 Ok: queued as" in answer, answer
    assert len(spooled(smtpd)) == 1
    assert sum(smtpd.stats.smtp_violations.values.values()) == 0


async def test_a_pipelined_group_ending_in_data_is_served(smtpd: Smtpd) -> None:
    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", smtpd.port), timeout=10) as sock:
            sock.recv(1024)
            sock.sendall(ENVELOPE + b"DATA\r\n")  # RFC 2920: DATA last in its group
            replies = b""
            while b"354 " not in replies:
                replies += sock.recv(4096)
            sock.sendall(MESSAGE + b"QUIT\r\n")
            return read_all(sock)

    answer = await in_thread(send)
    assert b"250 2.0.0 Ok: queued as" in answer, answer
    assert sum(smtpd.stats.smtp_violations.values.values()) == 0


def tool(name: str, install: str) -> str:
    """The path of a real client these tests need; missing, the test fails and says why."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    assert found, f"{name} is missing: apt-get install -y {install} (.ci/run does)"
    return found


@pytest.mark.parametrize("reuse", [False, True], ids=["one-per-connection", "-d"])
async def test_smtp_source_and_smtplib_are_served(smtpd: Smtpd, reuse: bool) -> None:
    args = [tool("smtp-source", "postfix"), "-s", "5", "-m", "40", "-l", "2000"]
    args += ["-f", "a@example.test", "-t", "b@example.test", *(["-d"] if reuse else [])]
    args.append(f"127.0.0.1:{smtpd.port}")
    done = await in_thread(lambda: subprocess.run(args, capture_output=True, timeout=60))
    assert done.returncode == 0, done.stderr

    def with_smtplib() -> None:
        with smtpd.client() as client:
            client.sendmail("a@example.test", ["b@example.test"], b"Subject: s\r\n\r\nx\r\n")

    await in_thread(with_smtplib)
    assert len(spooled(smtpd)) == 41
    assert sum(smtpd.stats.smtp_violations.values.values()) == 0


async def test_violations_are_counted_in_metrics_and_debug_vars(tmp_path: Path) -> None:
    port = free_port()
    config = base_config(tmp_path, monitoring={"address": f"127.0.0.1:{port}"})
    async with (
        running_dispatch(tmp_path, config) as dispatch,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        early = talk_first(dispatch.smtp_port)
        assert (await in_thread(lambda: read_all(early))).startswith(b"554 5.5.0")
        answer = await in_thread(lambda: pipeline_past_data(dispatch.smtp_port))
        assert answer.splitlines()[-1].startswith(b"554 5.5.0")
        debug_vars = (await client.get("/debug/vars")).json()
        scraped = (await client.get("/metrics")).text
    assert debug_vars["dispatch/smtpIn/protocolViolations"] == {
        "before_greeting": 1,
        "pipelining_after_data": 1,
    }
    family = "dispatch_smtp_protocol_violations_total"
    assert metric(scraped, family, kind="before_greeting") == 1
    assert metric(scraped, family, kind="pipelining_after_data") == 1
    assert f'{family}{{kind="nul_in_data"}} 0.0' in scraped  # every kind has a series


@pytest.mark.parametrize("options", [[], ["--pipeline"]], ids=["plain", "--pipeline"])
async def test_swaks_is_served(smtpd: Smtpd, options: list[str]) -> None:
    args = [tool("swaks", "swaks"), "--server", f"127.0.0.1:{smtpd.port}", *options]
    args += ["--from", "a@example.test", "--to", "b@example.test", "--timeout", "10"]
    done = await in_thread(lambda: subprocess.run(args, capture_output=True, timeout=60))
    assert done.returncode == 0, done.stdout
    assert len(spooled(smtpd)) == 1
    assert sum(smtpd.stats.smtp_violations.values.values()) == 0
