"""The Postmark-compatible API (POST /email and /email/batch), end to end: postmarker (the
Python Postmark SDK), pointed at Dispatch by base URL and server token only → the gate →
the spool → the local relay, whose captured copy is compared with what the SDK was given."""

from __future__ import annotations

import base64
import email.message
from pathlib import Path
from typing import Any

import pytest
import trio
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

from tests.api.test_http_api import api, captured, delivered
from tests.api.test_mailgun_api import PDF, PNG, parts_of
from tests.delivery.harness import Running


def sdk(dispatch: Running, key: str) -> PostmarkClient:
    port = dispatch.parts.settings.current.api.port
    return PostmarkClient(server_token=key, root_api_url=f"http://127.0.0.1:{port}/", timeout=20)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


MESSAGE: dict[str, Any] = {
    "From": "Zoë Sender <zoe@example.com>",
    "To": "ann@example.org, Bob <bob@example.org>",
    "Cc": "carol@example.net",
    "Bcc": "hidden@example.net",
    "Subject": "Grüße ☃",
    "TextBody": "Plain text, ünïcödé.\n",
    "HtmlBody": '<p>HTML body <img src="cid:logo.png"></p>\n',
    "Tag": "welcome",
    "ReplyTo": "replies@example.com",
    "Headers": {"X-Campaign": "autumn-2026"},
    "Metadata": {"user-id": "42"},
    "MessageStream": "outbound",
    "Attachments": [
        {"Name": "report.pdf", "Content": b64(PDF), "ContentType": "application/pdf"},
        {"Name": "notes.txt", "Content": b64("Notizen: Grüße\n".encode()),
         "ContentType": "text/plain; charset=utf-8"},
        {"Name": "logo.png", "Content": b64(PNG), "ContentType": "image/png",
         "ContentID": "cid:logo.png"},
    ],
}  # fmt: skip


async def test_postmarker_sends_text_html_files_tags_and_headers(tmp_path: Path) -> None:
    async with api(tmp_path) as (dispatch, client, key):
        postmark = sdk(dispatch, key)
        answer = await trio.to_thread.run_sync(lambda: postmark.emails.send(**MESSAGE))
        assert answer["ErrorCode"] == 0
        assert answer["Message"] == "OK"
        assert answer["SubmittedAt"]
        message_id = answer["MessageID"]
        await delivered(dispatch, message_id)
        status = await client.get(f"/api/v1/messages/{message_id}")
        assert status.status_code == 200, status.text
        assert status.json()["id"] == message_id
        message, envelope = captured(dispatch, message_id)
    assert envelope["mail_from"] == "zoe@example.com"
    assert envelope["recipients"] == [
        "ann@example.org", "bob@example.org", "carol@example.net", "hidden@example.net"
    ]  # fmt: skip
    assert answer["To"] == ", ".join(envelope["recipients"])
    assert message["From"] == "Zoë Sender <zoe@example.com>"
    assert message["To"] == "ann@example.org, Bob <bob@example.org>"
    assert message["Cc"] == "carol@example.net"
    assert message["Bcc"] is None
    assert message["Subject"] == "Grüße ☃"
    assert message["Reply-To"] == "replies@example.com"
    assert message["X-Campaign"] == "autumn-2026"
    assert message["X-PM-Metadata-user-id"] == "42"
    assert message["X-PM-Message-Stream"] == "outbound"
    found = parts_of(message)
    # CRLF is the message's line end on the wire (RFC 5322 §2.3); the text is the SDK's.
    assert found["text"].replace("\r\n", "\n") == MESSAGE["TextBody"]
    assert found["html"].replace("\r\n", "\n") == MESSAGE["HtmlBody"]
    assert found["files"] == {"report.pdf": PDF, "notes.txt": "Notizen: Grüße\n".encode()}
    assert found["inline"] == {"logo.png": (PNG, "<logo.png>")}
    assert "welcome" in envelope["tags"]


async def test_postmarker_batch_answers_each_message_and_refuses_only_the_bad_one(
    tmp_path: Path,
) -> None:
    async with api(tmp_path) as (dispatch, _client, key):
        postmark = sdk(dispatch, key)
        good = {"From": "a@example.com", "To": "b@example.org", "Subject": "one", "TextBody": "1"}
        bad = {"From": "a@example.com", "To": "not an address", "TextBody": "2"}
        answers = await trio.to_thread.run_sync(lambda: postmark.emails.send_batch(good, bad))
        assert [a["ErrorCode"] for a in answers] == [0, 300]
        assert "Invalid email request" in answers[1]["Message"]
        assert "to" in answers[1]["Message"]
        await delivered(dispatch, answers[0]["MessageID"])
        message, _ = captured(dispatch, answers[0]["MessageID"])
    assert message["Subject"] == "one"
    assert isinstance(message, email.message.EmailMessage)
    assert message.get_content().rstrip() == "1"


async def test_a_wrong_token_is_errorcode_10_and_a_bad_field_is_named(tmp_path: Path) -> None:
    async with api(tmp_path) as (dispatch, client, key):
        wrong = sdk(dispatch, "dsp_live_wrong")
        with pytest.raises(ClientError) as refused:
            await trio.to_thread.run_sync(
                lambda: wrong.emails.send(From="a@example.com", To="b@example.org", TextBody="x")
            )
        assert refused.value.error_code == 10
        response = await client.post(
            "/email",
            headers={"X-Postmark-Server-Token": key, "Accept": "application/json"},
            json={"From": "a@example.com", "To": "b@example.org", "Sender": "x"},
        )
        assert response.status_code == 422
        assert response.json()["ErrorCode"] == 300
        assert "Sender" in response.json()["Message"]
        form = await client.post(
            "/email", headers={"X-Postmark-Server-Token": key}, data={"From": "a@example.com"}
        )
        assert form.status_code == 415
        assert dispatch.parts.spool.counts().total == 0


async def test_template_calls_are_refused_with_what_to_send_instead(tmp_path: Path) -> None:
    async with api(tmp_path) as (dispatch, _client, key):
        client = sdk(dispatch, key)
        with pytest.raises(ClientError) as refused:
            await trio.to_thread.run_sync(
                lambda: client.emails.send_with_template(
                    TemplateId=1, TemplateModel={}, From="a@example.com", To="b@example.org"
                )
            )
        assert refused.value.error_code == 1101
        assert "POST /email" in str(refused.value)
        assert dispatch.parts.spool.counts().total == 0
