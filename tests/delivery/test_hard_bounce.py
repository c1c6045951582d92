"""Which permanent replies put an address on the suppression list: those refusing the address
(RFC 3463 X.1.x, 5.2.1; a plain 550/551/553), not those refusing the message."""

from __future__ import annotations

import pytest

from dispatch.delivery.suppression import is_hard_bounce


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.1.1 no such user",
        "upstream: 550 5.1.1 <b@y.test>: Recipient address rejected",
        "553 5.1.3 bad recipient address syntax",
        "550 5.2.1 mailbox disabled",
        "550 user unknown",  # no enhanced code: the reply code decides
        "551 user not local",
    ],
)
def test_replies_that_refuse_the_address_are_hard_bounces(reply: str) -> None:
    assert is_hard_bounce(reply)


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.7.1 message refused by policy",  # the message, not the address
        "552 5.3.4 message too big",
        "554 5.6.0 content rejected",
        "550 5.7.26 DMARC policy",
        "relay: the message needs SMTPUTF8, which mx.test does not offer (RFC 6531 §3.4)",
        "451 4.1.1 try later",
        "554 transaction failed",
    ],
)
def test_replies_that_refuse_the_message_are_not(reply: str) -> None:
    assert not is_hard_bounce(reply)
