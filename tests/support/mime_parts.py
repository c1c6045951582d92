"""Typed access to a parsed message's parts (stdlib ``email``), for the DSN tests."""

from __future__ import annotations

from email.message import Message


def parts_of(message: Message) -> list[Message]:
    """The sub-parts of a multipart (or message/*) part, typed."""
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, Message)]


def text_of(part: Message) -> str:
    """The payload of a non-multipart part, as text."""
    payload = part.get_payload()
    assert isinstance(payload, str)
    return payload
