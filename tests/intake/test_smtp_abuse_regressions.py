"""Regressions found by the abuse suite (tests/system/test_abuse_smtp.py), on the in-process
listener: a slow-drip client and parallel AUTH guesses."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections import Counter

from tests.intake.conftest import Smtpd, in_thread


async def test_dripping_one_byte_at_a_time_does_not_reset_the_command_timeout(
    smtpd: Smtpd,
) -> None:
    smtpd.configure(connection_timeout_seconds=0.6)

    def drip() -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", smtpd.port), timeout=10) as sock:
            sock.recv(1024)
            started = time.monotonic()
            sock.settimeout(0.2)
            for byte in b"EHLO a-very-slow-client.example\r\n":
                sock.sendall(bytes([byte]))
                try:
                    if answer := sock.recv(1024):
                        return answer, time.monotonic() - started
                except TimeoutError:
                    continue
            return b"", time.monotonic() - started

    answer, took = await in_thread(drip)
    assert answer.startswith(b"421 4.4.2"), answer
    assert took < 1.5  # the timeout, not the session deadline


async def test_steady_message_lines_keep_a_long_transfer_alive(smtpd: Smtpd) -> None:
    smtpd.configure(connection_timeout_seconds=0.6)

    def slow_but_steady() -> bytes:
        with socket.create_connection(("127.0.0.1", smtpd.port), timeout=10) as sock:
            sock.recv(1024)
            sock.sendall(b"EHLO c.example\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n")
            sock.sendall(b"DATA\r\n")
            answers = b""
            while b"354" not in answers:
                answers += sock.recv(1024)
            for n in range(8):  # 1.6 s in all, each line well within the timeout
                sock.sendall(b"line %d\r\n" % n)
                time.sleep(0.2)
            sock.sendall(b".\r\n")
            return sock.recv(1024)

    assert (await in_thread(slow_but_steady)).startswith(b"250 2.0.0")


async def test_parallel_auth_guesses_cannot_outrun_the_throttle(smtpd: Smtpd) -> None:
    from dispatch.security.passwords import hash_password

    smtpd.configure(
        allow_unsecure_auth=True,
        users=[{"username": "alice", "password_hash": hash_password("right")}],
    )
    codes: Counter[int] = Counter()
    ready = threading.Barrier(10)

    def guess(n: int) -> None:
        with smtpd.client() as client:
            client.ehlo()
            plain = base64.b64encode(f"\0alice\0guess{n}".encode()).decode()
            ready.wait()
            codes[client.docmd("AUTH PLAIN", plain)[0]] += 1

    def guess_at_once() -> None:
        threads = [threading.Thread(target=guess, args=(n,)) for n in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    await in_thread(guess_at_once)
    assert codes[535] == 3  # the fixture's throttle allows 3 failures
    assert codes[454] == 7
