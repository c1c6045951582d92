"""JSON nested deeper than the interpreter's stack is a 400, not a 500.

``json.loads`` raises ``RecursionError`` (not ``ValueError``) for 100 KB of ``[``: the client's
error, answered as invalid JSON, with nothing logged as an error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.api.test_http_api import api


async def test_deeply_nested_json_is_a_client_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="dispatch.api")
    async with api(tmp_path) as (dispatch, client, _key):
        response = await client.post(
            "/api/v1/messages",
            content=b"[" * 100_000,
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json() == {"error": "invalid JSON", "detail": "nested too deeply"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert dispatch.parts.spool.counts().total == 0
