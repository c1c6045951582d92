"""Transaction: one delivery's commands and what each reply decides, without I/O.

The relay tests (test_smtp_relay.py) run the same rules against real servers; these walk the
bookkeeping reply by reply, including the pipelined cases no polite server produces.
"""

from __future__ import annotations

import pytest

from dispatch.relays.smtp_transaction import Transaction
from dispatch.smtp import Extensions, Reply
from dispatch.smtp.events import Data, Mail, Rcpt

OFFERED = Extensions.from_ehlo_reply(
    Reply(250, ("mx.example", "PIPELINING", "SIZE 1000", "8BITMIME", "SMTPUTF8"))
)
BARE = Extensions()


def ok(code: int = 250) -> Reply:
    return Reply(code, ("ok",))


def no(code: int, text: str = "no") -> Reply:
    return Reply(code, (text,))


def plan(*recipients: str, extensions: Extensions = OFFERED, size: int = 100) -> Transaction:
    return Transaction.plan(extensions, "a@example.com", recipients, size, smtputf8=False)


def outcomes(tx: Transaction) -> list[tuple[str, str]]:
    return [(o.recipient, o.outcome) for o in tx.result(answered=True).outcomes]


def test_the_plan_declares_what_the_server_offers() -> None:
    tx = plan("b@example.org", "c@example.org")
    assert tx.commands == (
        Mail("a@example.com", size=100, body="8BITMIME"),
        Rcpt("b@example.org"),
        Rcpt("c@example.org"),
        Data(),
    )
    assert plan("b@example.org", extensions=BARE).mail == Mail("a@example.com")
    assert plan("bé@example.org").mail.smtputf8  # RFC 6531: a non-ASCII address needs it


@pytest.mark.parametrize(
    ("recipients", "extensions", "size", "refusal"),
    [
        (("b@example.org\r\nRSET",), OFFERED, 100, "CR, LF or NUL in an address"),
        (("bé@example.org",), BARE, 100, "needs SMTPUTF8, which mx:25 does not offer"),
        (("b@example.org",), OFFERED, 1001, "(1001 bytes) is larger than the 1000 bytes mx:25"),
    ],
)
def test_refusals_before_a_byte_is_sent(
    recipients: tuple[str, ...], extensions: Extensions, size: int, refusal: str
) -> None:
    reason = plan(*recipients, extensions=extensions, size=size).refusal("mx:25")
    assert reason is not None
    assert refusal in reason
    assert plan("b@example.org").refusal("mx:25") is None


def test_each_rcpt_decides_its_recipient_and_the_final_reply_the_accepted() -> None:
    tx = plan("b@example.org", "c@example.org", "d@example.org")
    mail, *rcpts, data = tx.commands
    tx.record(mail, ok())
    assert tx.wants(rcpts[0])
    tx.record(rcpts[0], ok())
    tx.record(rcpts[1], no(550, "no such user"))
    tx.record(rcpts[2], no(451, "later"))
    assert tx.wants(data)
    tx.record(data, ok(354))
    assert tx.message_may_follow
    tx.record_final(Reply.of(250, "Ok: queued as Q1", enhanced="2.0.0"))
    assert outcomes(tx) == [
        ("b@example.org", "delivered"),
        ("c@example.org", "permanent"),
        ("d@example.org", "transient"),
    ]
    result = tx.result(answered=True)
    assert result.remote_id == "Q1"
    assert result.ended_cleanly


def test_a_refused_mail_decides_every_recipient_and_stops_the_group() -> None:
    tx = plan("b@example.org", "c@example.org")
    mail, first, second, data = tx.commands
    tx.record(mail, no(550, "sender refused"))
    assert not tx.wants(first)  # one by one: nothing more is sent
    # Pipelined, the RCPTs and DATA went anyway and get 503s: they change nothing.
    tx.record(first, no(503, "need MAIL"))
    tx.record(second, no(503, "need MAIL"))
    tx.record(data, no(503, "need RCPT"))
    assert not tx.message_may_follow
    assert outcomes(tx) == [("b@example.org", "permanent"), ("c@example.org", "permanent")]
    assert all("sender refused" in o.response for o in tx.result(answered=True).outcomes)
    assert not tx.result(answered=True).ended_cleanly


def test_no_data_without_an_accepted_recipient() -> None:
    tx = plan("b@example.org")
    mail, rcpt, data = tx.commands
    tx.record(mail, ok())
    tx.record(rcpt, no(550))
    assert not tx.wants(data)
    assert outcomes(tx) == [("b@example.org", "permanent")]


def test_a_refused_data_decides_the_accepted_recipients() -> None:
    tx = plan("b@example.org", "c@example.org")
    mail, first, second, data = tx.commands
    tx.record(mail, ok())
    tx.record(first, ok())
    tx.record(second, no(550))
    tx.record(data, no(451, "try later"))
    assert outcomes(tx) == [("b@example.org", "transient"), ("c@example.org", "permanent")]


def test_a_broken_session_decides_only_the_rest() -> None:
    tx = plan("b@example.org", "c@example.org")
    mail, first, _, _ = tx.commands
    tx.record(mail, ok())
    tx.record(first, no(550))
    tx.fail_rest("transient", "relay primary: connection lost")
    assert outcomes(tx) == [("b@example.org", "permanent"), ("c@example.org", "transient")]
    with pytest.raises(AssertionError, match="undecided"):
        plan("b@example.org").result(answered=False)
