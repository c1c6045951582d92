"""Hostile bodies get short answers (issue 11, item 4).

A body such as ``{"to": [0, 0, …]}`` holds a fault per item; describing each would cost
memory and time for every one of them. At most ``MAX_PROBLEMS`` problems are described, the
rest counted in a last ``(more)`` entry, and the work runs in a thread.
(``tests/system/test_reliability_api_bodies.py`` checks ``/health`` meanwhile.)
"""

from __future__ import annotations

from pathlib import Path

from dispatch.api.body import MAX_FORM_PARTS
from dispatch.api.problems import MAX_PROBLEMS
from tests.api.test_http_api import api

ITEMS = 1_000_000


async def test_a_million_bad_list_items_get_a_bounded_answer(tmp_path: Path) -> None:
    body = b'{"from": "a@example.com", "text": "hi", "to": [' + b"0," * (ITEMS - 1) + b"0]}"
    async with api(tmp_path) as (dispatch, client, _):
        response = await client.post(
            "/api/v1/messages", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert len(response.content) < 8192
    detail = response.json()["detail"]
    assert len(detail) == MAX_PROBLEMS + 1
    assert [p["field"] for p in detail[:3]] == ["to[0]", "to[1]", "to[2]"]
    assert detail[-1]["field"] == "(more)"
    assert f"{ITEMS - MAX_PROBLEMS} more problems not listed" in detail[-1]["problem"]
    assert dispatch.parts.spool.counts().total == 0


async def test_bad_values_stop_being_checked_once_the_problems_are_full(tmp_path: Path) -> None:
    values = [f"bad line\n{i}" for i in range(500)]
    async with api(tmp_path) as (_, client, _key):
        response = await client.post(
            "/api/v1/messages",
            data={"from": "a@example.com", "text": "hi", "to": values},
            files={"attachment": ("a.txt", b"x", "text/plain")},  # makes it multipart
        )
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert len(detail) == MAX_PROBLEMS + 1
    assert "more values not checked" in detail[-1]["problem"]


async def test_too_many_multipart_parts(tmp_path: Path) -> None:
    parts = b"".join(
        b'--B\r\nContent-Disposition: form-data; name="o:tag"\r\n\r\nt\r\n'
        for _ in range(MAX_FORM_PARTS + 1)
    )
    async with api(tmp_path) as (_, client, _key):
        response = await client.post(
            "/api/v1/messages",
            content=parts + b"--B--\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=B"},
        )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid multipart body",
        "detail": f"more than {MAX_FORM_PARTS} parts; send fewer",
    }
