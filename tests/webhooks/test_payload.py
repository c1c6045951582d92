"""What a call says: the event types, the body, the signature (plain values, no I/O)."""

from __future__ import annotations

import hashlib
import hmac
import json

from dispatch.storage.records import MessageEvent
from dispatch.webhooks import payload


def event(kind: str, **fields: object) -> MessageEvent:
    return MessageEvent(
        message_id="spl_1",
        event=kind,  # type: ignore[arg-type]
        sender="ö@example.com",
        recipients=("b@example.org", "c@example.org"),
        tags=("invoice",),
        relay="upstream",
        route="default",
        attempt=2,
        response="451 4.3.0 try later",
        source="api",
        at=1_800_000_000.25,
        **fields,  # type: ignore[arg-type]
    )


def test_the_log_events_map_to_the_webhook_events() -> None:
    assert payload.event_type(event("delivered")) == "delivered"
    assert payload.event_type(event("retried")) == "deferred"
    assert payload.event_type(event("failed")) == "failed"
    assert payload.event_type(event("received")) is None
    assert payload.event_type(event("denied")) is None
    assert "bounced" not in payload.EVENT_TYPES.values()  # no log event: bounce_payload


def test_a_bounced_document_is_about_the_original_and_names_the_dsn() -> None:
    document = payload.bounce_payload(event("failed"), "spl_THEDSN", "relay-1")
    assert document["event"] == "bounced"
    assert document["log_event"] is None  # no row of the message log
    assert document["dsn_id"] == "spl_THEDSN"
    assert document["response"] == "451 4.3.0 try later"
    assert set(document) == set(payload.payload(event("failed"), "failed", "n")) | {"dsn_id"}


def test_the_body_is_compact_utf8_json_with_every_field() -> None:
    source = event("retried")
    body = payload.body_of(payload.payload(source, "deferred", "relay-1"))
    document = json.loads(body)
    compact = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    assert body == compact  # no spaces between tokens, non-ASCII as UTF-8 (not \\u-escaped)
    assert "ö@example.com".encode() in body
    assert document == {
        "version": 1,
        "id": source.event_id,
        "event": "deferred",
        "log_event": "retried",
        "occurred_at": "2027-01-15T08:00:00.250Z",
        "timestamp": 1_800_000_000.25,
        "message_id": "spl_1",
        "sender": "ö@example.com",
        "recipients": ["b@example.org", "c@example.org"],
        "relay": "upstream",
        "route": "default",
        "response": "451 4.3.0 try later",
        "remote_id": None,
        "attempt": 2,
        "duration_ms": None,
        "size": None,
        "tags": ["invoice"],
        "source": "api",
        "node": "relay-1",
    }


def test_the_signature_covers_the_timestamp_and_the_body() -> None:
    body = b'{"id":"x"}'
    headers = payload.headers(
        secret="k", timestamp=1_800_000_000, body=body, event_id="x", kind="failed", attempt=3
    )
    expected = hmac.new(b"k", b"1800000000." + body, hashlib.sha256).hexdigest()
    assert headers["Dispatch-Signature"] == f"v1={expected}"
    assert headers["Dispatch-Timestamp"] == "1800000000"
    assert headers["Dispatch-Event-Id"] == "x"
    assert headers["Dispatch-Event"] == "failed"
    assert headers["Dispatch-Attempt"] == "3"
    later = payload.signature("k", 1_800_000_001, body)
    assert later != headers["Dispatch-Signature"]  # a replayed body with a new time fails
