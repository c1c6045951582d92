"""The link's delivery kinds (``intake/link_delivery.py``): a relay dialogue handed to a worker.

Each kind round-trips through the link's own encoder and strict decoder; a field of the
wrong shape, a missing or unknown one, relay settings the loader refuses, or a kind sent the
wrong way is a :class:`BadMessage` that names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dispatch.config.settings import DkimKey, SmtpRelay
from dispatch.config.types import Port, PositiveInt, Secret
from dispatch.intake.link import FROM_WORKER, TO_WORKER, BadMessage, decode, encode, encode_one
from dispatch.intake.link_delivery import Cancel, Deliver, Dialogue, Handed, RelaysChanged
from dispatch.relays.base import DeliveryRequest, DeliveryResult, RecipientOutcome
from dispatch.security.dkim_keys import generate_key
from dispatch.smtp.dsn import MailDsn, RcptDsn


def request() -> DeliveryRequest:
    return DeliveryRequest(
        message_id="spl_1",
        mail_from="app@example.com",
        recipients=("a@y.test", "ü@y.test"),
        message_path=Path("/spool/processing/spl_1.eml"),
        size=1234,
        smtputf8=True,
        prefix=b"DKIM-Signature: v=1; a=ed25519-sha256\r\n",
        mail_dsn=MailDsn("HDRS", "env-1"),
        recipient_dsn={"a@y.test": RcptDsn(("SUCCESS", "FAILURE"), "rfc822;a@y.test")},
    )


def relays(tmp_path: Path) -> RelaysChanged:
    key_file = tmp_path / "example.key"
    if not key_file.exists():
        generate_key("example.com", "s1", "ed25519", key_file)
    return RelaysChanged(
        (
            SmtpRelay(
                name="up",
                host="127.0.0.1",
                port=Port(2525),
                tls="none",
                password=Secret("s3cret"),
                max_inflight=PositiveInt(3),
            ),
            SmtpRelay(name="other", host="smart.example"),
        ),
        (DkimKey(domain="example.com", selector="s1", private_key_file=str(key_file)),),
        "mx.example.com",
    )


def handed() -> Handed:
    return Handed(
        7,
        DeliveryResult(
            (
                RecipientOutcome("a@y.test", "delivered", "250 2.0.0 Ok: queued as Q1"),
                RecipientOutcome("b@y.test", "permanent", "550 5.1.1 no such user"),
            ),
            remote_id="Q1",
            dsn_passed=True,
            remote_mta="127.0.0.1",
        ),
        (Dialogue("relay up → 127.0.0.1:2525", 0.012, ((0.0, "connected", False),)),),
        None,
    )


def frame_of(document: object) -> bytes:
    return json.dumps([document]).encode()


def round_trip(message: Any) -> Any:
    (payload,) = encode([message])
    assert payload.isascii()
    receives = TO_WORKER if isinstance(message, TO_WORKER) else FROM_WORKER
    (back,) = decode(payload, receives)
    return back


def test_each_delivery_kind_round_trips(tmp_path: Path) -> None:
    for message in (
        relays(tmp_path),
        RelaysChanged((), (), "mx.example.com"),
        Deliver(3, "up", request()),
        Deliver(4, "up", DeliveryRequest("spl_2", "", ("x@y.test",), Path("/s/x.eml"), 1)),
        Cancel(3),
        handed(),
        Handed(8, DeliveryResult(()), (), "relay up: delivery suspended after: timed out"),
    ):
        assert round_trip(message) == message
    back = round_trip(Deliver(3, "up", request()))
    assert back.request.prefix == request().prefix  # bytes survive (base64)
    assert dict(back.request.recipient_dsn) == dict(request().recipient_dsn)
    assert back.request.content is None  # the worker reads the spooled file itself


def test_the_password_goes_to_the_worker_as_the_loader_reads_it(tmp_path: Path) -> None:
    back = round_trip(relays(tmp_path))
    assert back.relays[0].password.reveal() == "s3cret"
    assert back.relays[0].max_inflight == 3


def deliver_document() -> dict[str, Any]:
    return json.loads(encode_one(Deliver(3, "up", request())))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(token=-1), "token: expected a non-negative integer"),
        (lambda d: d.update(token="3"), "token: expected a non-negative integer"),
        (lambda d: d.update(relay=None), "relay: expected a string"),
        (lambda d: d["request"].update(size="12"), "request.size: expected a non-negative"),
        (lambda d: d["request"].update(smtputf8=1), "request.smtputf8: expected true or false"),
        (lambda d: d["request"].update(prefix="not base64!"), "request.prefix: not base64"),
        (lambda d: d["request"].update(recipients="a@y.test"), "request.recipients: expected a"),
        (lambda d: d["request"].update(message_path=""), "request.message_path: empty"),
        (lambda d: d["request"].pop("dsn"), "request: without dsn"),
        (lambda d: d["request"].update(extra=1), "request: with unknown field\\(s\\) extra"),
        (lambda d: d["request"]["dsn"].update(ret="ALL"), "request.dsn.ret: expected one of"),
        (
            lambda d: d["request"]["dsn"]["recipients"].update({"z@y.test": [None, None]}),
            "request.dsn.recipients: not recipients of the request",
        ),
        (
            lambda d: d["request"]["dsn"]["recipients"].update({"a@y.test": ["NEVER", None]}),
            "request.dsn.recipients\\['a@y.test'\\]: expected \\[notify, orcpt\\]",
        ),
    ],
)
def test_a_worker_refuses_a_deliver_of_the_wrong_shape(change: Any, expected: str) -> None:
    document = deliver_document()
    change(document)
    with pytest.raises(BadMessage, match=f"malformed 'deliver' message: {expected}"):
        decode(frame_of(document), TO_WORKER)


def test_a_deliver_without_a_field_or_with_one_too_many_is_refused() -> None:
    document = deliver_document()
    del document["relay"]
    with pytest.raises(BadMessage, match="'deliver' message without relay"):
        decode(frame_of(document), TO_WORKER)
    document = {**deliver_document(), "content": "aGk="}
    with pytest.raises(BadMessage, match="'deliver' message with unknown field\\(s\\) content"):
        decode(frame_of(document), TO_WORKER)


def handed_document() -> dict[str, Any]:
    return json.loads(encode_one(handed()))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["result"]["outcomes"][0].__setitem__(1, "maybe"), "result.outcomes\\[\\]"),
        (lambda d: d["result"].update(dsn_passed="yes"), "result.dsn_passed: expected true"),
        (lambda d: d["result"].update(remote_id=5), "result.remote_id: expected a string"),
        (lambda d: d["result"].pop("remote_mta"), "result: without remote_mta"),
        (lambda d: d.update(dialogues={}), "dialogues: expected a list"),
        (lambda d: d["dialogues"][0].__setitem__(1, -1), "dialogues\\[\\].duration"),
        (lambda d: d["dialogues"][0][2].append([0.1, "x"]), "dialogues\\[\\].events\\[\\]"),
        (lambda d: d["dialogues"][0][2].append([0.1, "x", "no"]), "dialogues\\[\\].events\\[\\]"),
        (
            lambda d: d["dialogues"][0].__setitem__(2, [[0.0, "x", False]] * 401),
            "dialogues\\[\\]: 401 events, more than a trace keeps",
        ),
        (lambda d: d.update(suspended=False), "suspended: expected a string"),
    ],
)
def test_the_main_process_refuses_a_handed_of_the_wrong_shape(change: Any, expected: str) -> None:
    document = handed_document()
    change(document)
    with pytest.raises(BadMessage, match=f"malformed 'handed' message: {expected}"):
        decode(frame_of(document), FROM_WORKER)


def test_relay_settings_the_loader_refuses_are_refused(tmp_path: Path) -> None:
    document = json.loads(encode_one(relays(tmp_path)))
    document["relays"][0]["port"] = 70000
    document["relays"][1]["tls"] = "sometimes"
    with pytest.raises(BadMessage, match="malformed 'relays_changed'") as refused:
        decode(frame_of(document), TO_WORKER)
    assert "relays[0].port" in str(refused.value)
    document = json.loads(encode_one(relays(tmp_path)))
    document["dkim"][0]["selector"] = "not a selector!"
    with pytest.raises(BadMessage, match=r"dkim\[0\]\.selector"):
        decode(frame_of(document), TO_WORKER)
    document = json.loads(encode_one(relays(tmp_path)))
    document["relays"].append({"name": "catch", "kind": "local"})
    with pytest.raises(BadMessage, match="only kind 'smtp' relays run in a worker process"):
        decode(frame_of(document), TO_WORKER)


def test_each_kind_goes_one_way_only() -> None:
    with pytest.raises(BadMessage, match="'handed' is not sent this way"):
        decode(encode([handed()])[0], TO_WORKER)
    with pytest.raises(BadMessage, match="'deliver' is not sent this way"):
        decode(encode([Deliver(1, "up", request())])[0], FROM_WORKER)
    with pytest.raises(BadMessage, match="'cancel' is not sent this way"):
        decode(encode([Cancel(1)])[0], FROM_WORKER)
