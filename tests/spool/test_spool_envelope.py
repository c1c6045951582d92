"""The envelope: immutable, versioned JSON that round-trips and fails clearly when corrupt."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from dispatch.spool import CorruptEnvelopeError, Envelope, RecipientResult, new_id


def make(**fields: Any) -> Envelope:
    options: dict[str, Any] = {
        "id": new_id(),
        "mail_from": "",
        "recipients": ("a@example.test", "b@example.test", "c@example.test"),
        "source": "smtp",
        "peer_ip": "2001:db8::1",
        "auth_identity": None,
        "tags": ("newsletter",),
        "received_at": 1_700_000_000.25,
        "size": 1234,
    }
    options.update(fields)
    return Envelope(**options)


def test_round_trip_keeps_every_field() -> None:
    envelope = make(
        mail_from="j\u00f6rg@b\u00fccher.example",
        recipients=("\u7528\u6237@example.test", "bad\udcffbyte@example.test"),
        auth_identity="key_ab12",
        attempts=3,
        next_attempt_at=1_700_000_600.5,
        last_error="451 4.7.1 greylisted",
        recipient_results={
            "\u7528\u6237@example.test": RecipientResult(
                status="delivered", response="250 2.0.0 ok", relay="primary", at=1.5
            )
        },
    )
    data = envelope.to_json()
    assert json.loads(data)["v"] == 1
    data.decode("ascii")  # surrogates and non-ASCII are escaped
    assert Envelope.from_json(data) == envelope


def test_pending_recipients_are_those_without_a_final_result() -> None:
    envelope = make(
        recipient_results={
            "a@example.test": RecipientResult("delivered", "250 ok", "primary", 1.0),
            "c@example.test": RecipientResult("failed", "550 no such user", "primary", 1.0),
        }
    )
    assert envelope.pending_recipients == ("b@example.test",)


def test_after_attempt_counts_and_merges_results() -> None:
    first = make().after_attempt(
        next_attempt_at=10.0,
        error="421 try later",
        results={"a@example.test": RecipientResult("delivered", "250", "r1", 2.0)},
    )
    second = first.after_attempt(
        next_attempt_at=20.0,
        error=None,
        results={"b@example.test": RecipientResult("delivered", "250", "r1", 3.0)},
    )
    assert (second.attempts, second.next_attempt_at, second.last_error) == (2, 20.0, None)
    assert set(second.recipient_results) == {"a@example.test", "b@example.test"}
    assert second.pending_recipients == ("c@example.test",)
    assert second.same_message(make(id=second.id))
    assert not second.same_message(make(id=second.id, size=1))


def test_envelope_is_immutable() -> None:
    envelope = make()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        envelope.attempts = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        envelope.recipient_results["a@example.test"] = RecipientResult(  # type: ignore[index]
            "delivered", "", None, 0.0
        )


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"recipients": ()}, ValueError),
        ({"recipients": "a@example.test"}, TypeError),
        ({"source": "carrier-pigeon"}, ValueError),
        ({"id": "../../x"}, ValueError),
        ({"size": -1}, ValueError),
        (
            {"recipient_results": {"z@x": RecipientResult("delivered", "", None, 0.0)}},
            ValueError,
        ),
    ],
)
def test_invalid_envelopes_cannot_be_built(fields: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        make(**fields)


def _valid_document() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(make().to_json())
    return result


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(v=2), "unsupported format version 2"),
        (lambda d: d.pop("v"), "unsupported format version None"),
        (lambda d: d.pop("recipients"), "field 'recipients' is missing"),
        (lambda d: d.update(size="12"), "size must be int"),
        (lambda d: d.update(attempts=True), "attempts must be int"),
        (lambda d: d.update(received_at=None), "received_at must be a number"),
        (lambda d: d.update(next_attempt_at=float("nan")), "must be finite"),
        (lambda d: d.update(recipients=["a@x", 3]), "an item of recipients must be str"),
        (lambda d: d.update(recipients=[]), "at least one recipient"),
        (lambda d: d.update(source="fax"), "source must be"),
        (lambda d: d.update(id="spl_nope"), "not a spool message id"),
        (
            lambda d: d.update(
                recipient_results={"a@example.test": {"status": "maybe", "response": "", "at": 1}}
            ),
            "status 'maybe'",
        ),
    ],
)
def test_corrupt_documents_raise_a_clear_error(change: Any, message: str) -> None:
    document = _valid_document()
    change(document)
    with pytest.raises(CorruptEnvelopeError, match=message):
        Envelope.from_json(json.dumps(document).encode())


@pytest.mark.parametrize(
    "data", [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"v": 1}', b"42", b"{}" * 3]
)
def test_garbage_raises_corrupt_envelope_error(data: bytes) -> None:
    with pytest.raises(CorruptEnvelopeError):
        Envelope.from_json(data)
