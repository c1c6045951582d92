"""docs/webhooks.md: its verification snippet accepts its example call, and refuses a changed
body, another secret and an old timestamp (the snippet and the example are run as printed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
SECRET = "whsec-test-0123456789"  # the e2e test's, which produced the example


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.DOTALL)


def test_the_documented_snippet_verifies_the_documented_call() -> None:
    namespace: dict[str, Any] = {}
    exec(blocks("python")[0], namespace)  # noqa: S102 - our own documentation
    verify = namespace["verify"]
    headers = dict(
        line.split(": ", 1) for line in blocks("http")[0].splitlines()[1:] if ": " in line
    )
    body = blocks("json")[0].strip().encode()
    now = int(headers["Dispatch-Timestamp"]) + 10
    assert verify(SECRET, headers, body, now=now)
    assert not verify(SECRET, headers, body.replace(b"b@example.org", b"c@example.org"), now=now)
    assert not verify("another secret", headers, body, now=now)
    assert not verify(SECRET, headers, body, now=now + 3600)  # a replay an hour later
