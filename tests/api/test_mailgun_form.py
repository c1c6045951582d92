"""Mailgun's fields read into messages (dispatch.api.mailgun_form), refusals above all: each
names the field and what to send instead."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

from dispatch.api.body import BodyRefusal, ReceivedBody
from dispatch.api.compose import Composed
from dispatch.api.mailgun_form import MAX_BATCH, prepare_mailgun

FORM = "application/x-www-form-urlencoded"


def prepared(tmp_path: Path, fields: list[tuple[str, str]]) -> list[Composed] | BodyRefusal:
    path = tmp_path / "body"
    path.write_bytes(urlencode(fields).encode())
    body = ReceivedBody(path, path.stat().st_size)
    return prepare_mailgun(body, FORM, mime=False, message_id_domain="d.test", now=0.0)


def refused(outcome: list[Composed] | BodyRefusal) -> str:
    assert isinstance(outcome, BodyRefusal), outcome
    assert outcome.status == 400
    return f"{outcome.error} {outcome.detail}"


BASE = [("from", "a@example.com"), ("subject", "s"), ("text", "t")]


def test_bad_recipient_variables_are_refused_with_what_to_send(tmp_path: Path) -> None:
    assert "not valid JSON" in refused(
        prepared(tmp_path, [*BASE, ("to", "b@example.org"), ("recipient-variables", "{")])
    )
    assert "JSON object of objects" in refused(
        prepared(tmp_path, [*BASE, ("to", "b@example.org"), ("recipient-variables", "[1]")])
    )
    many = ", ".join(f"r{n}@example.org" for n in range(MAX_BATCH + 1))
    assert f"at most {MAX_BATCH}" in refused(
        prepared(tmp_path, [*BASE, ("to", many), ("recipient-variables", "{}")])
    )
    assert "not an address" in refused(
        prepared(tmp_path, [*BASE, ("to", "not an address"), ("recipient-variables", "{}")])
    )


def test_variables_become_one_json_header_and_unknown_options_are_named(tmp_path: Path) -> None:
    outcome = prepared(tmp_path, [*BASE, ("to", "b@example.org"), ("v:a", "1"), ("v:b", "ü")])
    assert not isinstance(outcome, BodyRefusal)
    [message] = outcome
    header = next(
        line for line in message.message.split(b"\r\n") if line.startswith(b"X-Mailgun-Variables")
    )
    assert b'"a"' in header
    assert "o:deliverytime" in refused(
        prepared(tmp_path, [*BASE, ("to", "b@example.org"), ("o:deliverytime", "x")])
    )
    assert "to" in refused(prepared(tmp_path, BASE))


def test_a_batch_substitutes_per_recipient_and_keeps_the_others(tmp_path: Path) -> None:
    variables = json.dumps({"b@example.org": {"n": "Bee"}})
    outcome = prepared(
        tmp_path,
        [
            ("from", "a@example.com"),
            ("to", "b@example.org, C <c@example.org>"),
            ("subject", "Hi %recipient.n% %recipient_name%"),
            ("text", "t"),
            ("h:X-For", "%recipient_email%"),
            ("recipient-variables", variables),
        ],
    )
    assert not isinstance(outcome, BodyRefusal)
    assert [m.recipients for m in outcome] == [("b@example.org",), ("c@example.org",)]
    assert [m.subject for m in outcome] == ["Hi Bee", "Hi  C"]  # the subject is trimmed
    assert b"X-For: c@example.org" in outcome[1].message


def mime(tmp_path: Path, parts: list[tuple[str, str | bytes]]) -> list[Composed] | BodyRefusal:
    boundary = "XyZ"
    body = b""
    for name, value in parts:
        if isinstance(value, bytes):
            head = f'Content-Disposition: form-data; name="{name}"; filename="m.eml"'
            data = value
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"', value.encode()
        body += f"--{boundary}\r\n{head}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    path = tmp_path / "mime-body"
    path.write_bytes(body)
    return prepare_mailgun(
        ReceivedBody(path, len(body)),
        f"multipart/form-data; boundary={boundary}",
        mime=True,
        message_id_domain="d.test",
        now=0.0,
    )


def test_messages_mime_refusals_and_line_ends(tmp_path: Path) -> None:
    good = b"From: a@example.com\nSubject: s\n\nbody\n"
    outcome = mime(tmp_path, [("to", "b@example.org"), ("message", good)])
    assert not isinstance(outcome, BodyRefusal)
    assert outcome[0].message == b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n"
    assert outcome[0].mail_from == "a@example.com"
    assert "'to' parameter is missing" in refused(mime(tmp_path, [("message", good)]))
    assert "one file field 'message'" in refused(mime(tmp_path, [("to", "b@example.org")]))
    assert "From" in refused(mime(tmp_path, [("to", "b@example.org"), ("message", b"x: y\n\n")]))
    assert "'subject' is not a field of messages.mime" in refused(
        mime(tmp_path, [("to", "b@example.org"), ("subject", "s"), ("message", good)])
    )
