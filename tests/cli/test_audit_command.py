"""``dispatch audit``: what it prints, how it filters, and what it says to bad arguments.

Entries are written into a real SQLite database the way commands without a daemon write
them (``dispatch.cli.audit.write_entries``), with times in the past; the command runs as a
``python -m dispatch`` subprocess, as an operator runs it.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from dispatch.cli.audit import write_entries
from dispatch.storage import AuditEntry, open_store
from dispatch.storage.journal import JOURNAL_NAME, Journal
from tests.support.config import base_config, write_config

pytestmark = pytest.mark.slow  # a subprocess per check

NOW = time.time()


def cli_config(tmp_path: Path, url: str | None = None) -> Path:
    """Write ``dispatch.toml`` (the database at ``url`` if given) and return its path."""
    path = tmp_path / "dispatch.toml"
    write_config(path, base_config(tmp_path, database={"url": url} if url else {}))
    return path


def audit(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatch", "audit", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


ENTRIES = [
    AuditEntry(
        category="Config", level="Notice", message="old reload", actor="SIGHUP", at=NOW - 3 * 86_400
    ),
    AuditEntry(
        category="ApiKey", level="Notice", message="key created", actor="cli", at=NOW - 7200
    ),
    AuditEntry(
        category="Auth",
        level="Warning",
        message="user 'x\nforged line' throttled \x1b[31mred",
        actor="127.0.0.9",
        at=NOW - 1800,
    ),
    AuditEntry(
        category="System",
        level="Notice",
        message="Dispatch stopping",
        actor="dispatch",
        at=NOW - 60,
    ),
]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = cli_config(tmp_path)
    store = open_store(f"sqlite:///{tmp_path / 'data' / 'dispatch.db'}", tmp_path / "data")

    async def seed() -> None:
        assert await write_entries(store, ENTRIES, may_journal=False)
        await store.database.aclose()

    trio.run(seed)
    return path


def messages(stdout: str) -> list[str]:
    """The last column of each printed line after the header."""
    header, *lines = stdout.splitlines()
    start = header.index("MESSAGE")
    return [line[start:] for line in lines]


def test_prints_oldest_first_with_escaped_peer_text(config: Path) -> None:
    shown = audit(config)
    assert shown.returncode == 0, shown.stderr
    header = shown.stdout.splitlines()[0]
    assert header.split() == ["TIME", "CATEGORY", "LEVEL", "ACTOR", "MESSAGE"]
    assert messages(shown.stdout) == [
        "old reload",
        "key created",
        "user 'x\\nforged line' throttled \\x1b[31mred",  # one line, no terminal escape
        "Dispatch stopping",
    ]
    assert "\x1b" not in shown.stdout
    day = datetime.datetime.fromtimestamp(NOW - 60, datetime.UTC).strftime("%Y-%m-%d")
    assert shown.stdout.splitlines()[-1].startswith(day)


def test_filters_by_time_category_and_count(config: Path) -> None:
    assert messages(audit(config, "--since", "1h").stdout)[0].startswith("user 'x")
    assert len(messages(audit(config, "--since", "1h").stdout)) == 2
    assert len(messages(audit(config, "--since", "1d1h").stdout)) == 3
    three_hours_ago = datetime.datetime.fromtimestamp(NOW - 3 * 3600, datetime.UTC)
    naive_utc = three_hours_ago.replace(tzinfo=None).isoformat(timespec="seconds")
    assert len(messages(audit(config, "--since", naive_utc).stdout)) == 3
    assert messages(audit(config, "--category", "apikey").stdout) == ["key created"]
    limited = audit(config, "--limit", "2")
    assert messages(limited.stdout) == [
        "user 'x\\nforged line' throttled \\x1b[31mred",
        "Dispatch stopping",
    ]
    assert "the newest 2 entries are shown" in limited.stderr
    nothing = audit(config, "--category", "RELAY")
    assert nothing.returncode == 0
    assert nothing.stdout == "No audit entries in category Relay.\n"


def test_json_for_scripts(config: Path) -> None:
    shown = audit(config, "--json", "--since", "2026-01-01T00:00:00+00:00")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["truncated"] is False
    assert document["waiting_in_journal"] == 0
    assert [e["message"] for e in document["entries"]][-1] == "Dispatch stopping"
    first = document["entries"][0]
    assert set(first) == {"at", "time", "category", "level", "actor", "message", "id"}
    assert (first["category"], first["level"], first["actor"]) == ("Config", "Notice", "SIGHUP")
    assert first["at"] == pytest.approx(NOW - 3 * 86_400)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--since", "5"], "argument --since: '5' has no unit: write 5s, 5m, 5h or 5d"),
        (["--since", "yesterday"], "argument --since: 'yesterday' is neither a duration"),
        (["--since=-3h"], "argument --since: '-3h' is neither a duration"),
        (
            ["--category", "Logins"],
            "argument --category: 'Logins' is not an audit category; use one of: Auth, "
            "Config, ApiKey, Relay, System",
        ),
        (["--limit", "0"], "argument --limit: '0' is not a number of entries from 1 to 500"),
        (["--limit", "many"], "argument --limit: 'many' is not a number of entries"),
    ],
)
def test_bad_arguments_are_named_with_what_to_write(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    refused = audit(cli_config(tmp_path), *args)
    assert refused.returncode == 2
    assert expected in refused.stderr
    assert not (tmp_path / "data").exists()  # refused before the database was touched


def test_an_unreadable_database_and_a_waiting_journal_are_said(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database's directory should be")
    broken = audit(cli_config(tmp_path, f"sqlite:///{blocker / 'dispatch.db'}"))
    assert broken.returncode == 1
    assert "dispatch: cannot read the audit log:" in broken.stderr

    config = cli_config(tmp_path)
    (tmp_path / "data").mkdir()
    Journal(tmp_path / "data" / JOURNAL_NAME).append(ENTRIES[:2])
    waiting = audit(config)
    assert waiting.returncode == 0, waiting.stderr
    assert waiting.stdout == "No audit entries.\n"
    assert "2 log records wait in" in waiting.stderr
