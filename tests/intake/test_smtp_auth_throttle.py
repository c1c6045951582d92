"""The AUTH failure throttle counts per address and per username (issue 11, item 2).

Against the in-process listener, whose throttle allows 3 failures per 60 s (see conftest).
"""

from __future__ import annotations

import base64
import smtplib
import threading

import pytest

from dispatch.security.passwords import hash_password
from tests.intake.conftest import Smtpd, in_thread

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


def attempt(smtpd: Smtpd, user: str, password: str, source: str = "127.0.0.1") -> int:
    """One AUTH PLAIN on a fresh connection from ``source``; the reply code."""
    client = smtplib.SMTP(timeout=10)
    try:
        client.connect("127.0.0.1", smtpd.port, source_address=(source, 0))
        client.ehlo()
        plain = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return client.docmd("AUTH PLAIN", plain)[0]
    finally:
        client.close()


async def test_valid_logins_as_another_user_never_forgive_guesses(users: Smtpd) -> None:
    """The reproduced attack: 17 guesses at alice, each followed by a valid login as bob from
    the same address; the 17th guess is alice's real password. It used to get 235."""

    def interleave() -> list[tuple[int, int]]:
        rounds = []
        for n in range(17):
            guess = ALICE_PASSWORD if n == 16 else f"guess-{n}"
            rounds.append((attempt(users, ALICE, guess), attempt(users, BOB, BOB_PASSWORD)))
        return rounds

    rounds = await in_thread(interleave)
    alice = [a for a, _ in rounds]
    assert alice[:3] == [535, 535, 535]
    assert alice[3:] == [454] * 14  # throttled from the 4th on, the real password included
    assert [b for _, b in rounds[:2]] == [235, 235]  # bob is let in until the limit...
    assert {b for _, b in rounds[2:]} == {454}  # ...then this address is refused for all
    assert users.stats.smtp_auth["success"] == 2
    assert users.stats.smtp_auth["failure"] == 3


async def test_guesses_at_one_user_from_many_addresses_are_throttled(users: Smtpd) -> None:
    # The username's own limit is 4 times the address limit: 12 failures here.
    def spread() -> list[int]:
        codes = [attempt(users, ALICE, "wrong", f"127.0.0.{n}") for n in range(2, 14)]
        codes.append(attempt(users, ALICE, ALICE_PASSWORD, "127.0.0.14"))
        codes.append(attempt(users, BOB, BOB_PASSWORD, "127.0.0.14"))
        return codes

    # The username is throttled everywhere; the fresh address still serves other users.
    assert await in_thread(spread) == [535] * 12 + [454, 235]


async def test_one_address_alone_cannot_lock_an_account_out(users: Smtpd) -> None:
    def lockout_attempt() -> list[int]:
        codes = [attempt(users, ALICE, f"wrong {n}", "127.0.0.2") for n in range(5)]
        codes.append(attempt(users, ALICE, ALICE_PASSWORD, "127.0.0.3"))
        return codes

    assert await in_thread(lockout_attempt) == [535, 535, 535, 454, 454, 235]


async def test_a_success_forgives_only_that_users_failures_from_that_address(
    users: Smtpd,
) -> None:
    def typo_then_login() -> list[int]:
        codes = [attempt(users, BOB, "typo"), attempt(users, ALICE, "guess")]
        codes.append(attempt(users, BOB, BOB_PASSWORD))  # forgives bob's typo, not the guess
        codes += [attempt(users, BOB, "typo again"), attempt(users, BOB, BOB_PASSWORD)]
        codes += [attempt(users, ALICE, "guess 2"), attempt(users, BOB, BOB_PASSWORD)]
        return codes

    # bob typo (1 failure here), alice guess (2), bob ok (1 left: alice's), bob typo (2),
    # bob ok (1: alice's), alice guess (2), bob ok: had the guesses been forgiven by bob's
    # logins, the count could never reach 3; they stay, and the next guess is the last.
    assert await in_thread(typo_then_login) == [535, 535, 235, 535, 235, 535, 235]
    assert await in_thread(lambda: attempt(users, ALICE, "guess 3")) == 535
    assert await in_thread(lambda: attempt(users, BOB, BOB_PASSWORD)) == 454


async def test_concurrent_correct_logins_from_one_address_all_get_in(users: Smtpd) -> None:
    """An application's pool logging in at once: more attempts in flight than the limit
    allows failures, all with the right password. Those beyond the limit wait for the
    verdicts of those in flight instead of being refused."""
    ready = threading.Barrier(8)

    def login(codes: list[int]) -> None:
        with users.client() as client:
            client.ehlo()
            plain = base64.b64encode(f"\0{BOB}\0{BOB_PASSWORD}".encode()).decode()
            ready.wait()
            codes.append(client.docmd("AUTH PLAIN", plain)[0])

    def pool() -> list[int]:
        codes: list[int] = []
        threads = [threading.Thread(target=login, args=(codes,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return codes

    assert await in_thread(pool) == [235] * 8
    assert await in_thread(lambda: attempt(users, ALICE, "guess")) == 535  # nothing left over
