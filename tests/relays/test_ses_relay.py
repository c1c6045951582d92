"""The ``ses`` relay against moto's SES in server mode and a scripted SES front end
(tests/relays/ses_peer.py): success with the bytes compared, an unverified sender, throttling,
5xx and SES's error codes, a timeout, credentials from ``*_file`` and from the AWS environment,
calls of 50 recipients, the configuration checks, and the delivery rate over 200 messages."""

from __future__ import annotations

import time
from base64 import b64decode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from dispatch.config.loader import ConfigError, load_settings
from dispatch.config.settings import SesRelay
from dispatch.config.types import PositiveFloat, PositiveInt, Secret
from dispatch.monitoring.traces import Tracer
from dispatch.relays.base import DeliveryRequest
from dispatch.relays.registry import build_relay
from dispatch.relays.retry_after import retry_after_seconds
from dispatch.relays.ses import SesRelayClient, outcome_of_error
from tests.delivery.harness import running_dispatch
from tests.relays.peers import raw_server
from tests.relays.ses_peer import (
    KEY_ID,
    REGION,
    SECRET,
    MotoSes,
    moto_ses,
    scripted_ses,
)
from tests.support.config import base_config
from tests.support.waiting import wait_until_async

# UTF-8 headers and an 8-bit UTF-8 body (as SMTPUTF8/8BITMIME intake keeps it), an HTML part,
# a base64 attachment, CRLF line ends: every byte must reach SES as spooled. (moto keeps the
# raw message decoded as UTF-8, so bytes that are not UTF-8 cannot be checked against it.)
MESSAGE = (
    "From: Zoë <zoe@example.test>\r\n"
    "To: ana@example.net\r\n"
    "Cc: bo@example.net\r\n"
    "Subject: Grüße — ☃\r\n"
    "X-Custom: kept\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n'
    "\r\n"
    "--b1\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Ünïcödé body, 8-bit: ÿ ☃\r\n"
    "--b1\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "<p>Gr=C3=BC=C3=9Fe</p>\r\n"
    "--b1\r\n"
    'Content-Type: application/octet-stream; name="blob.bin"\r\n'
    "Content-Transfer-Encoding: base64\r\n"
    'Content-Disposition: attachment; filename="blob.bin"\r\n'
    "\r\n"
    "AAECA/7/\r\n"
    "--b1--\r\n"
).encode()
SENDER = "zoe@example.test"
# The envelope, not the header: SES must deliver to these (bcc@ is in no header).
RECIPIENTS = ("ana@example.net", "bcc@example.net")


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoSes]:
    with moto_ses() as peer:
        yield peer


@pytest.fixture
def ses(moto: MotoSes) -> MotoSes:
    moto.reset()
    return moto


def settings_for(base_url: str, **changes: Any) -> SesRelay:
    settings = SesRelay(
        name="ses",
        region=REGION,
        access_key_id=Secret(KEY_ID),
        secret_access_key=Secret(SECRET),
        base_url=base_url,
        timeout_seconds=PositiveFloat(10.0),
    )
    return attrs.evolve(settings, **changes)


class NoCapture:
    """The capture sink build_relay takes; only the local relay would use it."""

    async def capture(self, message_id: str) -> Path:
        raise AssertionError("the ses relay never captures")


def request_for(path: Path, recipients: tuple[str, ...] = RECIPIENTS) -> DeliveryRequest:
    if not path.exists():
        path.write_bytes(MESSAGE)
    return DeliveryRequest(path.stem, SENDER, recipients, path, len(MESSAGE))


# --- moto: success and a permanent refusal -----------------------------------------------------


async def test_a_message_reaches_ses_byte_for_byte_to_the_envelope_recipients(
    ses: MotoSes, tmp_path: Path
) -> None:
    ses.verify("example.test")
    relay = SesRelayClient(settings_for(ses.base_url))
    result = await relay.deliver(request_for(tmp_path / "m1.eml"))
    await relay.aclose()
    [sent] = ses.sent()
    assert sent["raw_data"].encode("utf-8") == MESSAGE == (tmp_path / "m1.eml").read_bytes()
    assert sent["source"] == SENDER
    # moto adds the header's To/Cc addresses after the Destination list (as SES v1 did).
    assert tuple(sent["destinations"][:2]) == RECIPIENTS
    assert [o.outcome for o in result.outcomes] == ["delivered", "delivered"]
    assert result.remote_id == sent["id"]
    assert sent["id"] in result.outcomes[0].response
    assert (relay.delivered, relay.failed, relay.inflight) == (1, 0, 0)


async def test_an_unverified_sender_is_refused_for_good(ses: MotoSes, tmp_path: Path) -> None:
    relay = SesRelayClient(settings_for(ses.base_url))
    result = await relay.deliver(request_for(tmp_path / "m2.eml"))
    await relay.aclose()
    assert [o.outcome for o in result.outcomes] == ["permanent", "permanent"]
    response = result.outcomes[0].response
    assert "400 MessageRejected" in response
    assert "zoe@example.test" in response
    assert result.remote_id is None
    assert ses.sent() == []
    assert (relay.delivered, relay.failed) == (0, 1)


async def test_the_rate_over_200_messages_to_moto(ses: MotoSes, tmp_path: Path) -> None:
    ses.verify(SENDER)
    relay = SesRelayClient(settings_for(ses.base_url, max_inflight=PositiveInt(8)))
    path = tmp_path / "rate.eml"
    path.write_bytes(MESSAGE)
    results = []

    async def one() -> None:
        results.append(await relay.deliver(request_for(path, ("r@example.net",))))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(one)
    elapsed = time.perf_counter() - started
    await relay.aclose()
    assert [r.outcomes[0].outcome for r in results] == ["delivered"] * 200
    assert len(ses.sent()) == 200
    assert relay.inflight == 0
    print(f"ses relay → moto: 200 messages in {elapsed:.2f}s, {200 / elapsed:.0f} messages/s")


# --- credentials -----------------------------------------------------------------------------


async def test_credentials_from_files_and_a_configuration_set(tmp_path: Path) -> None:
    (tmp_path / "key-id").write_text("AKIDFROMFILE\n")
    (tmp_path / "secret").write_text("secret-from-file\n")
    with scripted_ses("AKIDFROMFILE", "secret-from-file") as peer:
        config = tmp_path / "dispatch.toml"
        config.write_text(
            f"""
[[relays]]
name = "ses"
kind = "ses"
region = "{REGION}"
access_key_id_file = "{tmp_path / "key-id"}"
secret_access_key_file = "{tmp_path / "secret"}"
configuration_set = "transactional"
base_url = "{peer.base_url}"
"""
        )
        relay = build_relay(load_settings(config).relays[0], NoCapture(), "h")
        result = await relay.deliver(request_for(tmp_path / "m3.eml"))
        await relay.aclose()
    assert [o.outcome for o in result.outcomes] == ["delivered", "delivered"]
    [received] = peer.received
    assert "Credential=AKIDFROMFILE/" in received.headers["Authorization"]
    assert received.payload["ConfigurationSetName"] == "transactional"
    assert received.payload["FromEmailAddress"] == SENDER
    assert received.payload["Destination"] == {"ToAddresses": list(RECIPIENTS)}
    assert b64decode(received.payload["Content"]["Raw"]["Data"]) == MESSAGE
    assert result.remote_id is not None
    assert result.remote_id.startswith("0100-")


async def test_credentials_from_the_aws_environment_with_a_session_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIAFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-from-env")
    with scripted_ses("ASIAFROMENV", "secret-from-env", "token-from-env") as peer:
        empty = Secret("")
        settings = settings_for(peer.base_url, access_key_id=empty, secret_access_key=empty)
        relay = SesRelayClient(settings)
        result = await relay.deliver(request_for(tmp_path / "m4.eml"))
        await relay.aclose()
    assert [o.outcome for o in result.outcomes] == ["delivered", "delivered"]
    [received] = peer.received
    assert "Credential=ASIAFROMENV/" in received.headers["Authorization"]
    assert received.headers["X-Amz-Security-Token"] == "token-from-env"
    assert "ConfigurationSetName" not in received.payload


def test_no_credentials_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    empty = Secret("")
    settings = settings_for("", access_key_id=empty, secret_access_key=empty)
    with pytest.raises(ValueError, match="no AWS credentials: set access_key_id"):
        SesRelayClient(settings)


def test_check_config_names_a_bad_region_and_half_a_key_pair(tmp_path: Path) -> None:
    config = tmp_path / "dispatch.toml"
    config.write_text(
        '[[relays]]\nname = "ses"\nkind = "ses"\nregion = "Ireland"\naccess_key_id = "AKID"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    text = "\n".join(str(p) for p in caught.value.problems)
    assert "relays[0].region" in text
    assert "'Ireland' is not an AWS region name" in text
    assert "relays[0].access_key_id" in text
    assert "set both access_key_id and secret_access_key" in text


async def test_a_signature_by_other_credentials_is_refused_by_the_peer(tmp_path: Path) -> None:
    # The scripted peer's own check is real: a signature over other credentials fails.
    with scripted_ses(secret="another-secret") as peer:
        relay = SesRelayClient(settings_for(peer.base_url))
        result = await relay.deliver(request_for(tmp_path / "m5.eml"))
        await relay.aclose()
    assert [o.outcome for o in result.outcomes] == ["transient", "transient"]
    response = result.outcomes[0].response
    assert "403 SignatureDoesNotMatch" in response
    assert "check the relay's AWS credentials" in response


# --- the scripted peer: transient and permanent errors ------------------------------------------


async def test_throttling_with_retry_after_holds_the_relay(tmp_path: Path) -> None:
    with scripted_ses() as peer:
        peer.error(
            429,
            "TooManyRequestsException",
            "Maximum sending rate exceeded.",
            **{"Retry-After": "30"},
        )
        relay = SesRelayClient(settings_for(peer.base_url))
        first = await relay.deliver(request_for(tmp_path / "m6.eml"))
        second = await relay.deliver(request_for(tmp_path / "m6.eml"))
        await relay.aclose()
    assert [o.outcome for o in first.outcomes] == ["transient", "transient"]
    assert (
        "429 TooManyRequestsException: Maximum sending rate exceeded." in first.outcomes[0].response
    )
    assert "retry after 30s" in first.outcomes[0].response
    assert [o.outcome for o in second.outcomes] == ["transient", "transient"]
    assert "as SES asked" in second.outcomes[0].response
    assert len(peer.received) == 1  # the held delivery never reached SES
    assert (relay.delivered, relay.failed) == (0, 2)


@pytest.mark.parametrize(
    ("status", "code", "outcome", "says"),
    [
        (400, "LimitExceededException", "transient", "Daily message quota exceeded"),
        (500, "InternalFailure", "transient", "internal"),
        (503, "", "transient", "Service Unavailable"),
        (400, "AccountSuspendedException", "transient", "the SES account is suspended"),
        (400, "MailFromDomainNotVerifiedException", "permanent", "not verified"),
        (400, "BadRequestException", "permanent", "Illegal address"),
        (400, "MessageRejected", "permanent", "virus"),
    ],
)
async def test_ses_error_codes_decide_the_outcome(
    tmp_path: Path, status: int, code: str, outcome: str, says: str
) -> None:
    messages = {
        "LimitExceededException": "Daily message quota exceeded.",
        "InternalFailure": "An internal error occurred.",
        "AccountSuspendedException": "Account suspended.",
        "MailFromDomainNotVerifiedException": "MAIL FROM domain is not verified.",
        "BadRequestException": "Illegal address",
        "MessageRejected": "Message contains a virus.",
    }
    with scripted_ses() as peer:
        if code:
            peer.error(status, code, messages[code])
        else:
            peer.script.append((status, {"Content-Type": "text/plain"}, b"Service Unavailable"))
        relay = SesRelayClient(settings_for(peer.base_url))
        result = await relay.deliver(request_for(tmp_path / "m7.eml"))
        await relay.aclose()
    assert [o.outcome for o in result.outcomes] == [outcome, outcome]
    assert f"SES answered {status}" in result.outcomes[0].response
    assert says.lower() in result.outcomes[0].response.lower()
    assert result.remote_id is None


async def test_more_than_50_recipients_go_in_calls_of_50(tmp_path: Path) -> None:
    recipients = tuple(f"r{i}@example.net" for i in range(60))
    with scripted_ses() as peer:
        peer.script.append((200, {"Content-Type": "application/json"}, b'{"MessageId": "first"}'))
        peer.error(400, "MessageRejected", "Message contains a virus.")
        relay = SesRelayClient(settings_for(peer.base_url))
        result = await relay.deliver(request_for(tmp_path / "m8.eml", recipients))
        await relay.aclose()
    assert [len(r.payload["Destination"]["ToAddresses"]) for r in peer.received] == [50, 10]
    assert [o.outcome for o in result.outcomes] == ["delivered"] * 50 + ["permanent"] * 10
    assert result.remote_id == "first"
    assert (relay.delivered, relay.failed) == (1, 1)


async def test_an_ses_that_never_answers_is_a_timeout(tmp_path: Path) -> None:
    async def hang(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await trio.sleep_forever()

    async with raw_server(hang) as server:
        settings = settings_for(
            f"http://127.0.0.1:{server.port}", timeout_seconds=PositiveFloat(0.5)
        )
        relay = SesRelayClient(settings)
        with trio.fail_after(30):
            result = await relay.deliver(request_for(tmp_path / "m9.eml"))
        await relay.aclose()
    assert [o.outcome for o in result.outcomes] == ["transient", "transient"]
    assert "SES did not answer within 0.5s" in result.outcomes[0].response


def test_outcomes_and_retry_after() -> None:
    assert outcome_of_error(200, "") == "delivered"
    assert outcome_of_error(403, "UnrecognizedClientException") == "transient"
    assert outcome_of_error(400, "ThrottlingException") == "transient"
    assert outcome_of_error(404, "NotFoundException") == "transient"
    assert outcome_of_error(413, "") == "permanent"
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds("99999") == 3600.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


async def test_8bit_text_that_is_not_utf8_and_an_idn_domain_reach_ses_unchanged(
    tmp_path: Path,
) -> None:
    latin1 = (
        "From: zoe@example.test\r\nSubject: =?iso-8859-1?q?Gr=FC=DFe?=\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n"
        "\r\nGrüße aus Köln, ÿ\r\n"
    ).encode("latin-1")
    path = tmp_path / "m10.eml"
    path.write_bytes(latin1)
    request = DeliveryRequest("m10", SENDER, ("jürgen@bücher.example",), path, len(latin1))
    with scripted_ses() as peer:
        relay = SesRelayClient(settings_for(peer.base_url))
        result = await relay.deliver(request)
        await relay.aclose()
    assert [o.outcome for o in result.outcomes] == ["delivered"]
    [received] = peer.received
    assert b64decode(received.payload["Content"]["Raw"]["Data"]) == latin1
    # The domain goes as IDNA; the local part is SES's to accept or refuse.
    assert received.payload["Destination"] == {"ToAddresses": ["jürgen@xn--bcher-kva.example"]}


async def test_the_daemon_delivers_through_ses_and_logs_its_message_id(
    ses: MotoSes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await trio.to_thread.run_sync(ses.verify, "example.test")
    monkeypatch.setenv("SES_TEST_SECRET", SECRET)
    relay = {
        "name": "ses",
        "kind": "ses",
        "region": REGION,
        "access_key_id": KEY_ID,
        "secret_access_key_env": "SES_TEST_SECRET",
        "base_url": ses.base_url,
    }
    async with running_dispatch(tmp_path, base_config(tmp_path, relays=[relay])) as dispatch:
        message_id = await dispatch.submit(SENDER, list(RECIPIENTS), MESSAGE)
        await wait_until_async(lambda: dispatch.parts.spool.counts().total == 0)
        history = await dispatch.history(message_id)
    [sent] = await trio.to_thread.run_sync(ses.sent)
    # Intake prepends its Received header; the rest is the submitted message, unchanged.
    assert sent["raw_data"].encode("utf-8").endswith(MESSAGE)
    assert tuple(sent["destinations"][:2]) == RECIPIENTS
    delivered = [e for e in history if e.event == "delivered"]
    assert [e.remote_id for e in delivered] == [sent["id"]]


async def test_each_attempt_is_traced_as_a_relay_dialogue(tmp_path: Path) -> None:
    tracer = Tracer()
    with scripted_ses() as peer:
        peer.error(500, "InternalFailure", "An internal error occurred.")
        relay = SesRelayClient(settings_for(peer.base_url))
        for name in ("t1", "t2"):
            with tracer.start("delivery.attempt", name) as attempt:
                request = attrs.evolve(request_for(tmp_path / f"{name}.eml"), trace=attempt)
                await relay.deliver(request)
        await relay.aclose()
    family = tracer.families["relay.dialogue"]
    [failed] = family.errors
    assert failed.title == f"relay ses → {peer.base_url}/v2/email/outbound-emails"
    assert ["500 InternalFailure" in e.message and e.is_error for e in failed.events()] == [True]
    ok = [t for t in family.stored() if t is not failed]
    assert [[("sent by SES as 0100-" in e.message) for e in t.events()] for t in ok] == [[True]]
