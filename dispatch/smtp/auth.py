"""SASL PLAIN (RFC 4616) and LOGIN for SMTP AUTH (RFC 4954), for both roles.

Only the encodings live here; checking a password is the application's business. The server
side decodes what the client sent (`decode_plain`, `decode_login`) and raises `AuthDecodeError`,
which carries the 501 5.5.2 reply to send, on anything malformed. The client side builds the
responses (`plain_response`, `login_response`).

LOGIN has no RFC; its de-facto exchange is: `AUTH LOGIN [base64(user)]`, then 334
"Username:" (unless the user came with the command), the user, 334 "Password:", the password.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Final

from . import replies
from .replies import Reply

__all__ = [
    "LOGIN_PASSWORD_CHALLENGE",
    "LOGIN_USERNAME_CHALLENGE",
    "PLAIN_CHALLENGE",
    "AuthDecodeError",
    "PlainCredentials",
    "decode_base64",
    "decode_login",
    "decode_plain",
    "encode_base64",
    "login_response",
    "plain_response",
]

# The challenges, already base64: "Username:" and "Password:"; PLAIN's is empty (RFC 4954 §4).
LOGIN_USERNAME_CHALLENGE: Final = replies.auth_challenge("VXNlcm5hbWU6")
LOGIN_PASSWORD_CHALLENGE: Final = replies.auth_challenge("UGFzc3dvcmQ6")
PLAIN_CHALLENGE: Final = replies.auth_challenge("")


class AuthDecodeError(ValueError):
    """A SASL response that cannot be decoded. Answer `reply` (501 5.5.2) and go on: the
    exchange fails, the session does not."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.reply: Reply = replies.AUTH_BAD_BASE64


@dataclass(frozen=True, slots=True)
class PlainCredentials:
    """What a PLAIN response holds (RFC 4616 §2). The password stays out of repr."""

    authzid: str
    username: str
    password: str = field(repr=False)


def decode_base64(text: str) -> bytes:
    """Strict base64 as used by RFC 4954 §4; "=" alone is an empty response."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise AuthDecodeError(f"invalid base64 in SASL response: {exc}") from None


def encode_base64(data: bytes) -> str:
    """base64 for a SASL response; an empty one is "=" (RFC 4954 §4)."""
    return base64.b64encode(data).decode("ascii") if data else "="


def decode_plain(text: str) -> PlainCredentials:
    """Decode a PLAIN response: base64 of `[authzid] NUL authcid NUL passwd` (RFC 4616 §2)."""
    parts = decode_base64(text).split(b"\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise AuthDecodeError("PLAIN response is not authzid NUL username NUL password")
    try:
        authzid, username, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise AuthDecodeError("PLAIN response is not UTF-8 (RFC 4616 §2)") from None
    return PlainCredentials(authzid, username, password)


def decode_login(text: str) -> str:
    """Decode one LOGIN response (the username or the password)."""
    try:
        return decode_base64(text).decode("utf-8")
    except UnicodeDecodeError:
        raise AuthDecodeError("LOGIN response is not UTF-8") from None


def plain_response(username: str, password: str, authzid: str = "") -> str:
    """The client's PLAIN response, for `Auth("PLAIN", ...)` or after an empty 334."""
    return encode_base64(f"{authzid}\0{username}\0{password}".encode())


def login_response(text: str) -> str:
    """The client's answer to one LOGIN challenge (username or password)."""
    return encode_base64(text.encode())
