"""The typed link between the main process and an intake worker, over a real socket pair.

Each kind of message round-trips; anything that is not a valid message for the receiving
side (not JSON, not an array, no kind, an unknown kind, a kind sent the wrong way, a missing,
unexpected or ill-typed field) is refused with a :class:`BadMessage` that says which.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest
import trio

from dispatch.config.settings import ListenerSettings, SmtpUser
from dispatch.config.types import Cidr, Port, PositiveInt, ProcessCount, Secret
from dispatch.intake import link as link_module
from dispatch.intake.link import (
    FROM_WORKER,
    TO_WORKER,
    BadMessage,
    Committed,
    Counters,
    Link,
    LinkBroken,
    ListenerChanged,
    Logged,
    Message,
    Ready,
    Start,
    SuppressionChanged,
    decode,
    encode,
    encode_one,
)
from dispatch.monitoring.stats import Stats
from dispatch.security.certs import CertificateFiles
from dispatch.spool import Envelope, new_id
from dispatch.storage.records import MessageEvent
from dispatch.storage.suppression import Suppression

ARGON2 = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


def listener_settings() -> ListenerSettings:
    return ListenerSettings(
        ports=(Port(2525),),
        allowed_cidrs=(Cidr("127.0.0.0/8"),),
        max_message_bytes=PositiveInt(123_456),
        users=(SmtpUser("app", Secret(ARGON2)),),
        processes=ProcessCount(3),
    )


def envelope(recipients: int = 1) -> Envelope:
    now = 1_796_376_733.5  # a fixed time: every envelope encodes to the same length
    return Envelope(
        id=new_id(),
        mail_from="app@example.com",
        recipients=tuple(f"r{i}@example.net" for i in range(recipients)),
        source="smtp",
        peer_ip="127.0.0.1",
        auth_identity="app",
        tags=("welcome",),
        received_at=now,
        size=1234,
        attempts=0,
        next_attempt_at=now,
    )


def counters() -> Counters:
    stats = Stats()
    stats.smtp_commands.add("EHLO", 3)
    stats.smtp_loops.add()
    stats.smtp_session_seconds.observe(0.02)
    return Counters(stats.take())


EVERY_KIND: list[Message] = [
    Start(listener_settings(), "/var/spool/dispatch", CertificateFiles(Path("c"), Path("k"), True)),
    ListenerChanged(listener_settings()),
    SuppressionChanged(
        (
            Suppression(
                address="a@y.test",
                reason="550 5.1.1 no such user",
                message_id="spl_1",
                created_at=1.5,
                expires_at=2.0,
            ),
            Suppression(
                address="b@y.test", reason="x", message_id=None, created_at=1, expires_at=9
            ),
        )
    ),
    SuppressionChanged(()),
    Ready(),
    Committed(envelope()),
    Committed(envelope(), received=True, subject="Hi \udce9"),  # its received event inside
    Logged(MessageEvent(message_id="m1", event="received", source="smtp", subject="Hi \udce9")),
    counters(),
]


def pair() -> tuple[Link[Message], trio.SocketStream]:
    a, b = socket.socketpair()
    link = Link(trio.SocketStream(trio.socket.from_stdlib_socket(a)), (*TO_WORKER, *FROM_WORKER))
    return link, trio.SocketStream(trio.socket.from_stdlib_socket(b))


@pytest.mark.parametrize("message", EVERY_KIND, ids=lambda m: m.KIND)
def test_each_kind_round_trips(message: Message) -> None:
    (payload,) = encode([message])
    assert payload.isascii()
    receives = TO_WORKER if isinstance(message, TO_WORKER) else FROM_WORKER
    assert decode(payload, receives) == [message]


@pytest.mark.parametrize(("received", "subject"), [(False, None), (True, None), (True, "é \udce9")])
def test_a_committed_envelope_is_sent_as_its_commit_encoded_it(
    received: bool, subject: str | None
) -> None:
    # The worker hands on the JSON its commit wrote: the same bytes as encoding it anew.
    written = envelope(recipients=3)
    handed_on = Committed(written, written.to_json(), received, subject)
    anew = Committed(written, None, received, subject)
    assert encode_one(handed_on) == encode_one(anew)
    assert handed_on == anew  # the bytes are not part of the message
    (payload,) = encode([handed_on])
    assert payload.isascii()
    assert decode(payload, FROM_WORKER) == [anew]


async def test_messages_arrive_whole_and_in_order_then_none_at_the_end() -> None:
    ours, theirs_stream = pair()
    theirs = Link(theirs_stream, (*TO_WORKER, *FROM_WORKER))
    big = Committed(envelope(recipients=3000))  # more than the socket buffers: several reads
    batches: list[list[Message]] = [[Ready()], [big, *EVERY_KIND], [counters()]]

    async def send_all() -> None:
        for batch in batches:
            await ours.send(batch)
        await ours.aclose()

    received = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        while (batch := await theirs.receive()) is not None:
            received.append(batch)
    await theirs.aclose()
    assert received == batches


def test_a_batch_too_big_for_one_frame_is_split_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = [Committed(envelope()) for _ in range(10)]
    monkeypatch.setattr(link_module, "MAX_FRAME", 3 * len(encode_one(batch[0])) + 10)
    payloads = encode(batch)
    assert len(payloads) == 4
    assert [m for p in payloads for m in decode(p, FROM_WORKER)] == batch


async def test_a_frame_cut_short_is_an_error() -> None:
    link, raw = pair()
    await raw.send_all(struct.pack(">I", 100) + b"only part")
    await raw.aclose()
    with pytest.raises(LinkBroken, match="middle of a frame"):
        await link.receive()
    await link.aclose()


async def test_an_absurd_length_is_an_error() -> None:
    link, raw = pair()
    await raw.send_all(struct.pack(">I", 0xFFFFFFFF))
    with pytest.raises(LinkBroken, match="frame of"):
        await link.receive()
    await raw.aclose()
    await link.aclose()


def frame_of(*documents: object) -> bytes:
    return json.dumps(list(documents)).encode()


def committed_document() -> dict[str, object]:
    return json.loads(encode_one(Committed(envelope())))  # type: ignore[no-any-return]


MALFORMED: list[tuple[str, bytes, str]] = [
    ("not json", b"\x80\x03pickled", "not JSON"),
    ("not an array", b'{"kind": "ready"}', "must be a JSON array"),
    ("no kind", frame_of({"envelope": "{}"}), "object with a kind"),
    ("not an object", frame_of("ready"), "object with a kind"),
    ("unknown kind", frame_of({"kind": "reboot"}), "'reboot' is unknown; expected one of 'ready'"),
    ("wrong way", frame_of({"kind": "listener_changed", "listener": {}}), "not sent this way"),
    ("missing field", frame_of({"kind": "committed"}), "'committed' message without envelope"),
    (
        "unexpected field",
        frame_of({**committed_document(), "priority": 1}),
        "unknown field\\(s\\) priority",
    ),
    (
        "received not a boolean",
        frame_of({**committed_document(), "received": 1}),
        "malformed 'committed' message: received: expected true or false, got 1",
    ),
    (
        "subject not text",
        frame_of({**committed_document(), "received": True, "subject": ["Hi"]}),
        "malformed 'committed' message: subject: expected a string, got list",
    ),
    (
        "subject too long",
        frame_of({**committed_document(), "received": True, "subject": "x" * 1001}),
        "malformed 'committed' message: subject: longer than 1000 characters",
    ),
    (
        "envelope not an object",
        frame_of({**committed_document(), "envelope": '{"v": 1}'}),
        "malformed 'committed' message: invalid envelope: top level is not an object",
    ),
    (
        "corrupt envelope",
        frame_of({**committed_document(), "envelope": {"v": 1, "id": "x"}}),
        "malformed 'committed' message: invalid envelope",
    ),
    (
        "event not a journal document",
        frame_of({"kind": "logged", "event": "received m1"}),
        "malformed 'logged' message: not a log record: 'received m1'",
    ),
    (
        "event of no known type",
        frame_of({"kind": "logged", "event": {"type": "gossip", "message_id": "m"}}),
        "malformed 'logged' message: not a log record: KeyError\\('gossip'\\)",
    ),
    (
        "event field not text",
        frame_of({"kind": "logged", "event": {"type": "message", "message_id": 5, "event": "x"}}),
        "malformed 'logged' message: not a log record: AttributeError",
    ),
    (
        "bad event kind",
        frame_of({"kind": "logged", "event": {"type": "message", "message_id": "m", "event": "x"}}),
        "malformed 'logged' message: 'event' must be in \\('received'",
    ),
    (
        "counters not an object",
        frame_of({"kind": "counters", "figures": [1, 2]}),
        "figures: expected an object",
    ),
    (
        "a figure of no known shape",
        frame_of({"kind": "counters", "figures": {"x": "many"}}),
        "figures\\['x'\\]: expected a count",
    ),
    ("a boolean count", frame_of({"kind": "counters", "figures": {"x": True}}), "figures\\['x'\\]"),
]


@pytest.mark.parametrize(
    ("payload", "expected"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_the_main_process_refuses_what_is_not_a_worker_message(
    payload: bytes, expected: str
) -> None:
    with pytest.raises(BadMessage, match=expected):
        decode(payload, FROM_WORKER)


def test_a_worker_refuses_listener_settings_the_loader_would_refuse() -> None:
    document = json.loads(encode_one(ListenerChanged(listener_settings())))
    document["listener"]["ports"] = [70000]
    document["listener"]["require_auth"] = "yes"
    with pytest.raises(BadMessage, match="malformed 'listener_changed'") as refused:
        decode(frame_of(document), TO_WORKER)
    assert "listener.ports[0]: 70000 is not a port" in str(refused.value)
    assert "listener.require_auth" in str(refused.value)


def test_a_worker_refuses_a_suppression_entry_of_the_wrong_shape() -> None:
    document = {"kind": "suppression_changed", "entries": [["a@y.test", "x", None, 1.0]]}
    with pytest.raises(BadMessage, match="entries: expected \\[address, reason"):
        decode(frame_of(document), TO_WORKER)
    document = {"kind": "suppression_changed", "entries": "a@y.test"}
    with pytest.raises(BadMessage, match="entries: expected a list"):
        decode(frame_of(document), TO_WORKER)


def test_a_worker_refuses_worker_messages_and_a_bad_start() -> None:
    with pytest.raises(BadMessage, match="'ready' is not sent this way; expected one of 'start'"):
        decode(encode([Ready()])[0], TO_WORKER)
    document = json.loads(encode_one(EVERY_KIND[0]))
    document["certificate"] = "cert.pem"
    with pytest.raises(BadMessage, match="certificate: expected \\[cert, key, self-signed\\]"):
        decode(frame_of(document), TO_WORKER)


async def test_a_bad_message_over_the_socket_is_a_broken_link() -> None:
    link, raw = pair()
    payload = frame_of({"kind": "reboot"})
    await raw.send_all(struct.pack(">I", len(payload)) + payload)
    with pytest.raises(LinkBroken, match="'reboot' is unknown"):
        await link.receive()
    await raw.aclose()
    await link.aclose()


def test_stats_taken_in_a_worker_add_up_in_the_main_process() -> None:
    worker, main = Stats(), Stats()
    worker.smtp_commands.add("EHLO", 3)
    worker.smtp_loops.add()
    worker.smtp_session_seconds.observe(0.02)
    main.smtp_commands.add("EHLO", 1)
    (payload,) = encode([Counters(worker.take())])  # as it travels
    (arrived,) = decode(payload, FROM_WORKER)
    assert isinstance(arrived, Counters)
    main.merge(arrived.figures)
    assert main.smtp_commands["EHLO"] == 4
    assert main.smtp_loops.value == 1
    assert main.smtp_session_seconds.count == 1
    assert worker.smtp_commands["EHLO"] == 0  # taken: counting starts over
    assert worker.smtp_session_seconds.count == 0
    main.merge(worker.take())
    assert main.smtp_commands["EHLO"] == 4
