"""Promise #1 at the process level: a 250 means the message is on disk, whatever happens next."""

from __future__ import annotations

import signal
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dispatch.spool.testing import envelope_ids
from tests.conftest import Daemon, free_port
from tests.support.config import base_config, dump

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]


def body(sender: int, n: int) -> bytes:
    return (
        f"Subject: message {sender}-{n}\r\n\r\n".encode()
        + (f"line of sender {sender} number {n}\r\n".encode()) * 150  # ~5 KiB
    )


def test_every_acknowledged_message_survives_sigkill(start_daemon: Start, tmp_path: Path) -> None:
    port = free_port()
    daemon = start_daemon(dump(base_config(tmp_path, listener={"ports": [port]})))
    daemon.wait_for("all components ready")
    acknowledged: dict[str, bytes] = {}
    lock = threading.Lock()
    killed = threading.Event()

    def sender(index: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo()
                for n in range(10_000):
                    message = body(index, n)
                    client.mail("a@example.com")
                    client.rcpt("b@example.org")
                    code, text = client.data(message)
                    assert code == 250
                    with lock:
                        acknowledged[text.split()[-1].decode()] = message
                        if len(acknowledged) == 200 and not killed.is_set():
                            daemon.process.kill()  # right after this acknowledgement
                            killed.set()
        except (smtplib.SMTPException, OSError):
            assert killed.is_set(), "the connection broke before the kill"

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert killed.is_set()
    assert daemon.wait_exit() == -signal.SIGKILL
    assert len(acknowledged) >= 200
    spool = tmp_path / "spool"
    # Waiting (incoming/, or processing/ when the kill hit a delivery) or already delivered
    # by the default local relay into captured/: never missing, never altered.
    places = ("incoming", "processing", "captured")
    for message_id, message in acknowledged.items():
        found = [spool / p / f"{message_id}.eml" for p in places]
        stored = next(path for path in found if path.exists()).read_bytes()
        assert stored.endswith(message), message_id
        assert stored.startswith(b"Received: ")

    # The restarted daemon returns claims, delivers what was waiting, and loses nothing.
    restarted = start_daemon(dump(base_config(tmp_path, listener={"ports": [port]})))
    restarted.wait_for("all components ready")
    deadline = time.monotonic() + 30
    while envelope_ids(spool / "incoming") and time.monotonic() < deadline:
        time.sleep(0.1)
    restarted.signal(signal.SIGTERM)
    assert restarted.wait_exit() == 0
    captured = {p.stem for p in (spool / "captured").glob("*.eml")}
    assert set(acknowledged) <= captured


def test_sigterm_mid_data_is_not_acknowledged_and_leaves_nothing(
    start_daemon: Start, tmp_path: Path
) -> None:
    port = free_port()
    daemon = start_daemon(dump(base_config(tmp_path, listener={"ports": [port]})))
    daemon.wait_for("all components ready")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(1024)
        sock.sendall(b"EHLO x\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        replies = b""
        while b"354" not in replies:
            replies += sock.recv(4096)
        sock.sendall(b"Subject: half\r\n\r\n" + b"part of a message\r\n" * 100)
        daemon.signal(signal.SIGTERM)
        rest = b""
        while chunk := sock.recv(4096):
            rest += chunk
    assert rest.startswith(b"421 4.3.2")
    assert b"queued" not in rest
    assert daemon.wait_exit() == 0
    spool = tmp_path / "spool"
    assert [p.name for p in spool.glob("*/*")] == [], "nothing may be left in the spool"
