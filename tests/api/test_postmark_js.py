"""The Postmark-compatible API with postmark.js (npm), pointed at Dispatch by host and server
token only: text, HTML, attachments, an inline image, a tag, metadata and custom headers,
compared with the copy the local relay captured; a batch; a wrong token.

postmark is installed at test time into ``.nox/node-postmark`` (kept between runs, never
committed); Node 20 runs the script in ``tests/api/node``.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.api.test_http_api import api, captured, delivered
from tests.api.test_mailgun_api import PDF, PNG, parts_of
from tests.support.npm import node_modules as install_node_modules

SCRIPT = Path(__file__).parent / "node" / "postmark_send.cjs"
PACKAGES = ("postmark@^4",)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """``node_modules`` holding postmark.js, installed once with npm."""
    return install_node_modules("node-postmark", PACKAGES, "postmark")


async def send_with_postmark_js(modules: Path, payload: dict[str, Any]) -> dict[str, Any]:
    environment = {**os.environ, "NODE_PATH": str(modules)}
    done = await trio.run_process(
        ["node", str(SCRIPT)],
        stdin=json.dumps(payload).encode(),
        capture_stdout=True,
        capture_stderr=True,
        env=environment,
    )
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_postmark_js_sends_text_html_files_tags_and_headers(
    tmp_path: Path, node_modules: Path
) -> None:
    message: dict[str, Any] = {
        "From": "Zoë Sender <zoe@example.com>",
        "To": "ann@example.org, Bob <bob@example.org>",
        "Bcc": "hidden@example.net",
        "Subject": "Grüße aus Node ☃",
        "TextBody": "Plain text, ünïcödé.\n",
        "HtmlBody": '<p>HTML <img src="cid:logo.png"></p>\n',
        "Tag": "node",
        "Headers": [{"Name": "X-Campaign", "Value": "node-2026"}],
        "Metadata": {"user-id": "7"},
        "MessageStream": "outbound",
        "Attachments": [
            {"Name": "report.pdf", "Content": b64(PDF), "ContentType": "application/pdf"},
            {"Name": "logo.png", "Content": b64(PNG), "ContentType": "image/png",
             "ContentID": "cid:logo.png"},
        ],
    }  # fmt: skip
    async with api(tmp_path) as (dispatch, client, key):
        port = dispatch.parts.settings.current.api.port
        payload = {"host": f"127.0.0.1:{port}", "token": key, "message": message}
        answer = await send_with_postmark_js(node_modules, payload)
        assert answer["ok"], answer
        body = answer["body"]
        assert (body["ErrorCode"], body["Message"]) == (0, "OK")
        message_id = body["MessageID"]
        await delivered(dispatch, message_id)
        status = await client.get(f"/api/v1/messages/{message_id}")
        assert status.status_code == 200, status.text
        captured_message, envelope = captured(dispatch, message_id)
    assert envelope["recipients"] == ["ann@example.org", "bob@example.org", "hidden@example.net"]
    assert captured_message["Subject"] == message["Subject"]
    assert captured_message["From"] == message["From"]
    assert captured_message["Bcc"] is None
    assert captured_message["X-Campaign"] == "node-2026"
    assert captured_message["X-PM-Metadata-user-id"] == "7"
    assert "node" in envelope["tags"]
    found = parts_of(captured_message)
    assert found["text"].replace("\r\n", "\n") == message["TextBody"]
    assert found["html"].replace("\r\n", "\n") == message["HtmlBody"]
    assert found["files"] == {"report.pdf": PDF}
    assert found["inline"] == {"logo.png": (PNG, "<logo.png>")}


async def test_postmark_js_batch_and_a_wrong_token(tmp_path: Path, node_modules: Path) -> None:
    batch = [
        {"From": "a@example.com", "To": f"r{n}@example.org", "Subject": f"n{n}", "TextBody": "x"}
        for n in range(3)
    ]
    async with api(tmp_path) as (dispatch, _client, key):
        host = f"127.0.0.1:{dispatch.parts.settings.current.api.port}"
        answer = await send_with_postmark_js(
            node_modules, {"host": host, "token": key, "batch": batch}
        )
        assert answer["ok"], answer
        ids = [item["MessageID"] for item in answer["body"]]
        assert [item["ErrorCode"] for item in answer["body"]] == [0, 0, 0]
        for n, message_id in enumerate(ids):
            await delivered(dispatch, message_id)
            assert captured(dispatch, message_id)[0]["Subject"] == f"n{n}"
        wrong = await send_with_postmark_js(
            node_modules, {"host": host, "token": "dsp_live_wrong", "message": batch[0]}
        )
    assert not wrong["ok"]
    assert (wrong["statusCode"], wrong["code"]) == (401, 10)
