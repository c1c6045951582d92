"""SASL PLAIN and LOGIN helpers."""

from __future__ import annotations

import base64

import pytest

from dispatch.smtp import auth


def test_plain_round_trip() -> None:
    response = auth.plain_response("zoë", "p@ss word", authzid="admin")
    creds = auth.decode_plain(response)
    assert (creds.authzid, creds.username, creds.password) == ("admin", "zoë", "p@ss word")
    assert "p@ss" not in repr(creds)


@pytest.mark.parametrize(
    "text",
    [
        "!!!",
        "abc",  # bad padding
        base64.b64encode(b"user\0pass").decode(),  # one NUL
        base64.b64encode(b"\0\0pass").decode(),  # no username
        base64.b64encode(b"\0user\0").decode(),  # no password
        base64.b64encode(b"\0us\xffer\0pass").decode(),  # not UTF-8
        "é",
    ],
)
def test_plain_rejects(text: str) -> None:
    with pytest.raises(auth.AuthDecodeError) as info:
        auth.decode_plain(text)
    assert info.value.reply.code == 501
    assert info.value.reply.enhanced == "5.5.2"


def test_login() -> None:
    assert auth.decode_login(auth.login_response("user")) == "user"
    assert auth.LOGIN_USERNAME_CHALLENGE.serialise() == b"334 VXNlcm5hbWU6\r\n"
    assert base64.b64decode(auth.LOGIN_PASSWORD_CHALLENGE.lines[0]) == b"Password:"


def test_empty_response() -> None:
    assert auth.encode_base64(b"") == "="
    assert auth.decode_base64("=") == b""
