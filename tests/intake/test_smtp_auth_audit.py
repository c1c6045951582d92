"""AUTH throttling reaches the audit log once per throttling, never once per refusal.

Against the in-process listener (3 failures per 60 s per address, 12 per username; see
conftest) with smtplib over real sockets; ``Smtpd.audited`` is what the listener handed to
its audit callable. The daemon's own audit rows are checked in tests/system/test_audit_log.py.
"""

from __future__ import annotations

import threading

import pytest

from dispatch.security.passwords import hash_password
from tests.intake.conftest import Smtpd, in_thread
from tests.intake.test_smtp_auth_throttle import attempt

ALICE, BOB = "alice", "bob"
ALICE_PASSWORD, BOB_PASSWORD = "alice's secret", "bob's secret"


@pytest.fixture
def users(smtpd: Smtpd) -> Smtpd:
    smtpd.configure(
        allow_unsecure_auth=True,
        users=[
            {"username": ALICE, "password_hash": hash_password(ALICE_PASSWORD)},
            {"username": BOB, "password_hash": hash_password(BOB_PASSWORD)},
        ],
    )
    return smtpd


async def test_an_address_throttled_is_audited_once_however_often_it_is_refused(
    users: Smtpd,
) -> None:
    codes = await in_thread(lambda: [attempt(users, ALICE, f"guess {n}") for n in range(10)])
    assert codes == [535] * 3 + [454] * 7
    assert len(users.audited) == 1
    [entry] = users.audited
    assert (entry.category, entry.level, entry.actor) == ("Auth", "Warning", "127.0.0.1")
    assert entry.message.startswith("SMTP AUTH: 127.0.0.1 throttled after 3 failed attempts")
    assert ALICE_PASSWORD not in entry.message
    # Other addresses are not throttled, and add nothing.
    assert await in_thread(lambda: attempt(users, BOB, BOB_PASSWORD, "127.0.0.2")) == 235
    assert len(users.audited) == 1


async def test_a_username_throttled_from_many_addresses_is_audited_once(users: Smtpd) -> None:
    def spread() -> list[int]:
        return [attempt(users, ALICE, "wrong", f"127.0.0.{n}") for n in range(2, 18)]

    # 12 failures at alice from 12 addresses, then 4 refusals from 4 more.
    assert await in_thread(spread) == [535] * 12 + [454] * 4
    [entry] = users.audited
    assert (entry.category, entry.level) == ("Auth", "Warning")
    assert "user 'alice' throttled after 12 failed attempts" in entry.message
    assert "the last from 127.0.0.13" in entry.message
    assert entry.actor == "127.0.0.13"


async def test_parallel_guesses_make_one_entry(users: Smtpd) -> None:
    ready = threading.Barrier(10)

    def guess(codes: list[int], n: int) -> None:
        ready.wait()
        codes.append(attempt(users, ALICE, f"parallel guess {n}", "127.0.0.5"))

    def burst() -> list[int]:
        codes: list[int] = []
        threads = [threading.Thread(target=guess, args=(codes, n)) for n in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return codes

    codes = await in_thread(burst)
    assert sorted(codes) == [454] * 7 + [535] * 3
    assert [e.actor for e in users.audited] == ["127.0.0.5"]


async def test_correct_logins_are_never_audited(users: Smtpd) -> None:
    codes = await in_thread(lambda: [attempt(users, BOB, BOB_PASSWORD) for _ in range(6)])
    assert codes == [235] * 6
    assert users.audited == []
