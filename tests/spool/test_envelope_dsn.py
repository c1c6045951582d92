"""The envelope's DSN parameters (RFC 3461: RET, ENVID, NOTIFY, ORCPT) and ``delay_warned``:
they round-trip, envelopes written before them still load, bad ones are refused by name."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dispatch.smtp.dsn import MailDsn, RcptDsn
from dispatch.spool import CorruptEnvelopeError, Envelope, RecipientResult, new_id

RECIPIENTS = ("a@example.test", "b@example.test")


def make(**fields: Any) -> Envelope:
    options: dict[str, Any] = {
        "id": new_id(),
        "mail_from": "sender@example.test",
        "recipients": RECIPIENTS,
        "source": "smtp",
        "peer_ip": "127.0.0.1",
        "auth_identity": None,
        "tags": (),
        "received_at": 1_700_000_000.0,
        "size": 10,
    }
    options.update(fields)
    return Envelope(**options)


def test_dsn_parameters_round_trip() -> None:
    envelope = make(
        mail_dsn=MailDsn("FULL", "env id"),
        recipient_dsn={
            "a@example.test": RcptDsn(("SUCCESS", "FAILURE"), "rfc822;A@example.test"),
            "b@example.test": RcptDsn(("NEVER",), None),
        },
        delay_warned=True,
        bounced=True,
    )
    back = Envelope.from_json(envelope.to_json())
    assert back == envelope
    assert back.mail_dsn == MailDsn("FULL", "env id")
    assert back.dsn_of("a@example.test").orcpt == "rfc822;A@example.test"
    assert back.dsn_of("b@example.test").wants("FAILURE") is False
    assert back.delay_warned
    assert back.bounced
    assert back.same_message(envelope)
    assert not back.same_message(make(id=envelope.id))


def test_an_envelope_without_them_is_written_as_before_and_loads() -> None:
    envelope = make()
    document = json.loads(envelope.to_json())
    assert "dsn" not in document
    assert "delay_warned" not in document
    assert "bounced" not in document
    back = Envelope.from_json(envelope.to_json())
    assert back.mail_dsn == MailDsn()
    assert back.dsn_of("a@example.test") == RcptDsn()  # RFC 3461 defaults: FAILURE, DELAY
    assert back.delay_warned is False


def test_the_results_dsn_facts_are_not_written() -> None:
    result = RecipientResult(
        "delivered", "250 ok", "up", 1.0, remote_mta="mx.test", dsn_passed=True
    )
    envelope = make(recipient_results={"a@example.test": result})
    back = Envelope.from_json(envelope.to_json())
    assert back.recipient_results["a@example.test"].remote_mta is None
    assert back.recipient_results["a@example.test"].dsn_passed is False


def test_a_bounce_is_a_source_of_its_own() -> None:
    envelope = make(source="bounce", mail_from="")
    assert Envelope.from_json(envelope.to_json()).source == "bounce"


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("yes", "dsn must be an object"),
        ({"ret": "BODY"}, "dsn.ret must be FULL, HDRS or null"),
        ({"envid": 3}, "envid must be str"),
        ({"recipients": {"a@example.test": {"notify": "NEVER"}}}, "notify of 'a@example.test'"),
        ({"recipients": {"z@example.test": {"notify": None}}}, "DSN parameters for non-recipients"),
    ],
)
def test_bad_dsn_fields_are_refused_by_name(dsn: object, message: str) -> None:
    document = json.loads(make().to_json())
    document["dsn"] = dsn
    with pytest.raises(CorruptEnvelopeError, match=message):
        Envelope.from_json(json.dumps(document).encode())
