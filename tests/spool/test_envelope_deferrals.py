"""The envelope's per-recipient delivery record: a result's route, and why pending recipients
wait (``deferrals``); envelopes written before these fields existed still load."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dispatch.spool import CorruptEnvelopeError, Deferral, Envelope, RecipientResult, new_id

RECIPIENTS = ("a@example.test", "b@example.test", "c@example.test")


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


def test_deferrals_and_routes_round_trip() -> None:
    envelope = make(
        recipient_results={
            "a@example.test": RecipientResult(
                "failed", "550 5.1.1 no such user", "primary", 2.0, route="routes[1]"
            )
        },
        deferrals={"b@example.test": Deferral("451 4.7.1 greylisted", "primary", "default", 3.0)},
    )
    document = json.loads(envelope.to_json())
    assert document["recipient_results"]["a@example.test"]["route"] == "routes[1]"
    assert document["deferrals"]["b@example.test"]["response"] == "451 4.7.1 greylisted"
    assert Envelope.from_json(envelope.to_json()) == envelope


def test_an_envelope_written_before_routes_and_deferrals_loads() -> None:
    # The exact shape earlier builds wrote: no "route" in a result, no "deferrals" at all.
    message_id = new_id()
    old = {
        "v": 1,
        "id": message_id,
        "mail_from": "",
        "recipients": ["a@example.test", "b@example.test"],
        "source": "api",
        "peer_ip": None,
        "auth_identity": "key_1",
        "tags": [],
        "received_at": 1.5,
        "size": 3,
        "attempts": 1,
        "next_attempt_at": 9.0,
        "last_error": "b@example.test: 451 later",
        "recipient_results": {
            "a@example.test": {"status": "delivered", "response": "250", "relay": "r", "at": 2}
        },
    }
    envelope = Envelope.from_json(json.dumps(old).encode())
    assert envelope.recipient_results["a@example.test"].route is None
    assert envelope.deferrals == {}
    assert envelope.pending_recipients == ("b@example.test",)


def test_an_envelope_without_deferrals_writes_no_deferrals_field() -> None:
    assert "deferrals" not in json.loads(make().to_json())


def test_after_attempt_replaces_deferrals_and_drops_finished_recipients() -> None:
    first = make().after_attempt(
        next_attempt_at=10.0,
        error="two deferred",
        deferrals={
            "a@example.test": Deferral("451 first", "primary", "default", 1.0),
            "b@example.test": Deferral("421 busy", "primary", "default", 1.0),
        },
    )
    second = first.after_attempt(
        next_attempt_at=20.0,
        error="one deferred",
        results={"a@example.test": RecipientResult("delivered", "250 ok", "backup", 2.0)},
        deferrals={"b@example.test": Deferral("452 full", "backup", "default", 2.0)},
    )
    assert set(second.deferrals) == {"b@example.test"}
    assert second.deferrals["b@example.test"].response == "452 full"
    assert second.deferrals["b@example.test"].relay == "backup"


def test_deferrals_for_a_stranger_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="deferrals for non-recipients"):
        make(deferrals={"z@example.test": Deferral("451", None, None, 0.0)})


@pytest.mark.parametrize(
    ("deferrals", "message"),
    [
        ([], "deferrals must be dict"),
        ({"a@example.test": "451"}, "is not an object"),
        ({"a@example.test": {"response": 451, "at": 1}}, "response must be str"),
        ({"a@example.test": {"response": "451", "relay": 3, "at": 1}}, "relay must be str"),
        ({"a@example.test": {"response": "451"}}, "field 'at' is missing"),
    ],
)
def test_corrupt_deferrals_raise_a_clear_error(deferrals: object, message: str) -> None:
    document = json.loads(make().to_json())
    document["deferrals"] = deferrals
    with pytest.raises(CorruptEnvelopeError, match=message):
        Envelope.from_json(json.dumps(document).encode())
