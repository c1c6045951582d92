"""A full disk under the spool: 452, nothing half-written, and intake resumes by itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.intake.conftest import Smtpd, in_thread


@pytest.fixture
def spool_dir(small_fs: Path) -> Path:
    return small_fs / "spool"


async def test_message_that_does_not_fit_gets_452_and_leaves_nothing(smtpd: Smtpd) -> None:
    big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 400  # 400 KB on a 256 KiB disk

    def send(body: bytes) -> tuple[int, bytes]:
        with smtpd.client() as client:
            client.ehlo()
            client.mail("a@example.com")
            client.rcpt("b@example.org")
            return client.data(body)

    code, text = await in_thread(lambda: send(big))
    assert code == 452
    assert text.startswith(b"4.3.1")
    assert smtpd.spool.counts().total == 0
    assert list((smtpd.root / "tmp").iterdir()) == []
    assert list((smtpd.root / "incoming").iterdir()) == []
    assert smtpd.stats.spool_writes["full"] == 1
    # Nothing to clean up by hand: the next message that fits is accepted.
    code, _ = await in_thread(lambda: send(b"Subject: small\r\n\r\nfits\r\n"))
    assert code == 250
    assert smtpd.spool.counts().incoming == 1
