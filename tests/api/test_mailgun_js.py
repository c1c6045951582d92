"""The Mailgun-compatible API with mailgun.js (npm), pointed at Dispatch by base URL and key
only: text, HTML, attachments, inline image, tags, custom headers and variables, compared
with the copy the local relay captured.

mailgun.js and form-data are installed at test time into ``.nox/node-mailgun`` (kept between
runs, never committed); Node 20 runs the script in ``tests/api/node``.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
import trio

from tests.api.test_http_api import api, captured, delivered
from tests.api.test_mailgun_api import PDF, PNG, parts_of
from tests.support.npm import node_modules as install_node_modules

SCRIPT = Path(__file__).parent / "node" / "mailgun_send.cjs"
PACKAGES = ("mailgun.js@^14", "form-data@^4")


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """``node_modules`` holding mailgun.js and form-data, installed once with npm."""
    return install_node_modules("node-mailgun", PACKAGES, "mailgun.js")


async def send_with_mailgun_js(modules: Path, payload: dict[str, object]) -> dict[str, object]:
    environment = {**os.environ, "NODE_PATH": str(modules)}
    done = await trio.run_process(
        ["node", str(SCRIPT)],
        stdin=json.dumps(payload).encode(),
        capture_stdout=True,
        capture_stderr=True,
        env=environment,
    )
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


async def test_mailgun_js_sends_text_html_files_tags_and_headers(
    tmp_path: Path, node_modules: Path
) -> None:
    message: dict[str, object] = {
        "from": "Zoë Sender <zoe@example.com>",
        "to": ["ann@example.org", "Bob <bob@example.org>"],
        "cc": "carol@example.net",
        "subject": "Grüße aus Node ☃",
        "text": "Plain text, ünïcödé.\n",
        "html": '<p>HTML <img src="cid:logo.png"></p>\n',
        "o:tag": ["node", "welcome"],
        "h:X-Campaign": "node-2026",
        "v:user-id": "7",
        "attachment": [{"filename": "report.pdf", "base64": base64.b64encode(PDF).decode()}],
        "inline": [{"filename": "logo.png", "base64": base64.b64encode(PNG).decode()}],
    }
    async with api(tmp_path) as (dispatch, client, key):
        port = dispatch.parts.settings.current.api.port
        payload: dict[str, object] = {
            "url": f"http://127.0.0.1:{port}",
            "key": key,
            "domain": "mg.example.org",
            "message": message,
        }
        answer = await send_with_mailgun_js(node_modules, payload)
        assert answer["status"] == 200, answer
        body = answer["body"]
        assert isinstance(body, dict)
        assert body["message"] == "Queued. Thank you."
        message_id = str(body["id"])
        await delivered(dispatch, message_id)
        status = await client.get(f"/api/v1/messages/{message_id}")
        assert status.status_code == 200
        wrong = await send_with_mailgun_js(node_modules, {**payload, "key": key + "x"})
    assert wrong["status"] == 401
    captured_message, envelope = captured(dispatch, message_id)
    assert envelope["mail_from"] == "zoe@example.com"
    assert sorted(envelope["recipients"]) == [
        "ann@example.org",
        "bob@example.org",
        "carol@example.net",
    ]
    assert envelope["tags"] == ["node", "welcome"]
    assert captured_message["Subject"] == message["subject"]
    assert captured_message["X-Campaign"] == "node-2026"
    assert json.loads(captured_message["X-Mailgun-Variables"]) == {"user-id": "7"}
    found = parts_of(captured_message)
    assert found["text"].replace("\r\n", "\n") == message["text"]
    assert found["html"].replace("\r\n", "\n") == message["html"]
    assert found["files"] == {"report.pdf": PDF}
    assert found["inline"]["logo.png"][0] == PNG
