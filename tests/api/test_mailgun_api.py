"""The Mailgun-compatible API (POST /v3/{domain}/messages and messages.mime), end to end:
Mailgun's official Python SDK, pointed at Dispatch by base URL and key only → the gate →
the spool → the local relay, whose captured copy is compared with what the SDK was given."""

from __future__ import annotations

import email.message
import json
from pathlib import Path
from typing import Any

import httpx
import trio
from mailgun.client import Client

from tests.api.test_http_api import api, captured, delivered
from tests.delivery.harness import Running

DOMAIN = "mg.example.org"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # binary, every byte value
PDF = b"%PDF-1.4\n\xe2\xe3\xcf\xd3 binary \x00\xff\n%%EOF\n"


def sdk(dispatch: Running, key: str) -> Client:
    port = dispatch.parts.settings.current.api.port
    return Client(auth=("api", key), api_url=f"http://127.0.0.1:{port}")


def parts_of(message: email.message.EmailMessage) -> dict[str, Any]:
    """The text, HTML and files of a captured message, by what they are."""
    found: dict[str, Any] = {"files": {}, "inline": {}}
    for part in message.walk():
        if part.is_multipart():
            continue
        disposition = part.get_content_disposition()
        if disposition == "attachment":
            found["files"][part.get_filename()] = part.get_payload(decode=True)
        elif disposition == "inline" and part.get_filename():
            found["inline"][part.get_filename()] = (
                part.get_payload(decode=True),
                part["Content-ID"],
            )
        elif part.get_content_type() == "text/plain":
            found["text"] = part.get_content()
        elif part.get_content_type() == "text/html":
            found["html"] = part.get_content()
    return found


async def test_the_python_sdk_sends_text_html_files_tags_and_headers(tmp_path: Path) -> None:
    async with api(tmp_path) as (dispatch, client, key):
        data = {
            "from": "Zoë Sender <zoe@example.com>",
            "to": ["ann@example.org", "Bob <bob@example.org>"],
            "cc": "carol@example.net",
            "bcc": "hidden@example.net",
            "subject": "Grüße ☃",
            "text": "Plain text, ünïcödé.\n",
            "html": '<p>HTML body <img src="cid:logo.png"></p>\n',
            "o:tag": ["welcome", "autumn"],
            "h:X-Campaign": "autumn-2026",
            "h:Reply-To": "replies@example.com",
            "v:user-id": "42",
        }
        files = [
            ("attachment", ("report.pdf", PDF)),
            ("attachment", ("notes.txt", "Notizen: Grüße\n".encode())),
            ("inline", ("logo.png", PNG)),
        ]
        mailgun = sdk(dispatch, key)
        response = await trio.to_thread.run_sync(
            lambda: mailgun.messages.create(data=data, files=files, domain=DOMAIN)
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["message"] == "Queued. Thank you."
        message_id = answer["id"]
        await delivered(dispatch, message_id)
        status = await client.get(f"/api/v1/messages/{message_id}")
        assert status.status_code == 200, status.text
    message, envelope = captured(dispatch, message_id)
    assert envelope["mail_from"] == "zoe@example.com"
    assert sorted(envelope["recipients"]) == sorted(
        ["ann@example.org", "bob@example.org", "carol@example.net", "hidden@example.net"]
    )
    assert envelope["tags"] == ["welcome", "autumn"]
    assert message["Subject"] == "Grüße ☃"
    assert message["From"] == "Zoë Sender <zoe@example.com>"
    assert message["X-Campaign"] == "autumn-2026"
    assert message["Reply-To"] == "replies@example.com"
    assert json.loads(message["X-Mailgun-Variables"]) == {"user-id": "42"}
    assert "hidden@example.net" not in message.as_string()
    found = parts_of(message)
    assert found["text"].replace("\r\n", "\n") == data["text"]
    assert found["html"].replace("\r\n", "\n") == data["html"]
    assert found["files"] == {"report.pdf": PDF, "notes.txt": "Notizen: Grüße\n".encode()}
    assert found["inline"]["logo.png"][0] == PNG


async def test_a_batch_send_makes_one_message_per_recipient_with_its_variables(
    tmp_path: Path,
) -> None:
    async with api(tmp_path) as (dispatch, client, key):
        data = {
            "from": "news@example.com",
            "to": ["Ann <ann@example.org>", "bob@example.org"],
            "subject": "Hello %recipient.first%",
            "text": "Your id is %recipient.id% (%recipient_email%).",
            "recipient-variables": json.dumps(
                {"ann@example.org": {"first": "Ann", "id": 1}, "bob@example.org": {"first": "Bo"}}
            ),
        }
        mailgun = sdk(dispatch, key)
        response = await trio.to_thread.run_sync(
            lambda: mailgun.messages.create(data=data, domain=DOMAIN)
        )
        assert response.status_code == 200, response.text
        listing = await client.get("/api/v1/messages")
        ids = [item["id"] for item in listing.json()["items"]]
        assert response.json()["id"] in ids
        assert len(ids) == 2
        for message_id in ids:
            await delivered(dispatch, message_id)
    seen = {}
    for message_id in ids:
        message, envelope = captured(dispatch, message_id)
        [recipient] = envelope["recipients"]
        seen[recipient] = (str(message["Subject"]), str(message.get_content()).strip())
    assert seen == {
        "ann@example.org": ("Hello Ann", "Your id is 1 (ann@example.org)."),
        "bob@example.org": ("Hello Bo", "Your id is  (bob@example.org)."),
    }


async def test_the_python_sdk_sends_raw_mime_kept_byte_for_byte(tmp_path: Path) -> None:
    raw = (
        b"From: Zo\xc3\xab <zoe@example.com>\r\n"
        b"To: ann@example.org\r\n"
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
        b"X-Custom: kept as sent\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b"8-bit body: \xc3\xbc\xc3\xb1\xc3\xae\r\n"
    )
    async with api(tmp_path) as (dispatch, _client, key):
        mailgun = sdk(dispatch, key)
        response = await trio.to_thread.run_sync(
            lambda: mailgun.mimemessage.create(
                data={"to": ["ann@example.org", "bcc@example.net"], "o:tag": "raw"},
                files={"message": ("message.mime", raw)},
                domain=DOMAIN,
            )
        )
        assert response.status_code == 200, response.text
        message_id = response.json()["id"]
        await delivered(dispatch, message_id)
    folder = dispatch.root / "spool" / "captured"
    assert (folder / f"{message_id}.eml").read_bytes() == raw
    envelope = json.loads((folder / f"{message_id}.json").read_bytes())
    assert envelope["mail_from"] == "zoe@example.com"
    assert envelope["recipients"] == ["ann@example.org", "bcc@example.net"]
    assert envelope["tags"] == ["raw"]


async def test_urlencoded_form_and_basic_auth_and_mailgun_error_shape(tmp_path: Path) -> None:
    async with api(tmp_path) as (dispatch, client, key):
        port = dispatch.parts.settings.current.api.port
        base = f"http://127.0.0.1:{port}/v3/{DOMAIN}/messages"
        fields = {"from": "a@example.com", "to": "b@example.org", "subject": "s", "text": "t"}
        async with httpx.AsyncClient(timeout=20) as plain:
            sent = await plain.post(base, data=fields, auth=("api", key))
            wrong = await plain.post(base, data=fields, auth=("api", key + "x"))
            other_user = await plain.post(base, data=fields, auth=("user", key))
            option = await plain.post(base, data={**fields, "o:tracking": "yes"}, auth=("api", key))
            no_to = await plain.post(base, data={"from": "a@example.com"}, auth=("api", key))
            as_json = await plain.post(base, json=fields, auth=("api", key))
            # Basic auth works on /api/v1 too: an app may keep one way of sending the key.
            basic_v1 = await plain.get(
                f"http://127.0.0.1:{port}/api/v1/messages/{sent.json()['id']}", auth=("api", key)
            )
        assert sent.status_code == 200, sent.text
        await delivered(dispatch, sent.json()["id"])
    assert wrong.status_code == 401
    assert wrong.json()["message"].startswith("unauthorized: ")
    assert other_user.status_code == 401
    assert option.status_code == 400
    assert "o:tracking" in option.json()["message"]
    assert no_to.status_code == 400
    assert "to" in no_to.json()["message"]
    assert as_json.status_code == 415
    assert basic_v1.status_code == 200
    assert client.headers["Authorization"].startswith("Bearer ")
