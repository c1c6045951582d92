"""``dispatch api-key create|list|revoke`` as an operator runs them: real subprocesses."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import trio

from dispatch.security.api_keys import ApiKeyVerifier, VerifiedKey
from dispatch.security.key_format import PREFIX_LENGTH, is_well_formed, prefix_of
from dispatch.storage import ApiKeyStore, SqliteDatabase
from dispatch.storage.audit import ApiKeyAudit
from tests.support.config import base_config, write_config

pytestmark = pytest.mark.slow

KEY = re.compile(r"dsp_live_[A-Za-z0-9_-]{43}")


def cli_config(tmp_path: Path, url: str | None = None) -> Path:
    """Write ``dispatch.toml`` (the database at ``url`` if given) and return its path."""
    config = base_config(tmp_path, database={"url": url} if url else {})
    path = tmp_path / "dispatch.toml"
    write_config(path, config)
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatch", "api-key", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=config.parent,
    )


def rows(tmp_path: Path, sql: str) -> list[Any]:
    with closing(sqlite3.connect(tmp_path / "data" / "dispatch.db")) as connection:
        return connection.execute(sql).fetchall()


def database_bytes(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((tmp_path / "data").iterdir()) if p.is_file())


def test_create_list_and_revoke_for_a_person(tmp_path: Path) -> None:
    config = cli_config(tmp_path)
    created = cli(config, "create", "--name", "billing app")
    assert created.returncode == 0, created.stderr
    [key] = KEY.findall(created.stdout)
    assert is_well_formed(key)
    assert "will not be shown again" in created.stdout
    assert key.encode() not in database_bytes(tmp_path)
    [(stored_hash,)] = rows(tmp_path, "SELECT hash FROM api_keys")

    listed = cli(config, "list")
    assert listed.returncode == 0, listed.stderr
    assert "billing app" in listed.stdout
    assert prefix_of(key) in listed.stdout
    assert key not in listed.stdout
    assert key[PREFIX_LENGTH:] not in listed.stdout
    assert stored_hash not in listed.stdout
    assert "argon2" not in listed.stdout
    [header, line] = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "PREFIX", "CREATED", "LAST", "USED", "REVOKED"]
    assert line.rstrip().endswith("-")  # not revoked

    revoked = cli(config, "revoke", prefix_of(key))
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in revoked.stdout
    again = cli(config, "revoke", "1")
    assert again.returncode == 0, again.stderr
    assert "already revoked" in again.stdout
    [line] = cli(config, "list").stdout.splitlines()[1:]
    assert not line.rstrip().endswith("-")  # a revocation time now

    audit = rows(tmp_path, "SELECT category, level, actor, message FROM audit_log ORDER BY id")
    assert [(c, level, actor) for c, level, actor, _ in audit] == [
        ("ApiKey", "Notice", "cli"),
        ("ApiKey", "Notice", "cli"),
        ("ApiKey", "Info", "cli"),
    ]
    assert all(key[PREFIX_LENGTH:] not in message for *_, message in audit)


def test_json_for_scripts(tmp_path: Path) -> None:
    config = cli_config(tmp_path)
    empty = cli(config, "list", "--json")
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout) == {"keys": []}

    created = json.loads(cli(config, "create", "--name", "ci", "--json").stdout)
    key = created["key"]
    assert is_well_formed(key)
    assert created["prefix"] == prefix_of(key)
    assert created["name"] == "ci"
    assert created["revoked_at"] is None

    listed = cli(config, "list", "--json")
    assert key not in listed.stdout
    [entry] = json.loads(listed.stdout)["keys"]
    assert set(entry) == {"id", "name", "prefix", "created_at", "last_used_at", "revoked_at"}
    assert entry["id"] == created["id"]

    revoked = json.loads(cli(config, "revoke", str(created["id"]), "--json").stdout)
    assert revoked["revoked_at"] is not None
    assert revoked["already_revoked"] is False
    again = json.loads(cli(config, "revoke", created["prefix"], "--json").stdout)
    assert again["already_revoked"] is True
    assert again["revoked_at"] == revoked["revoked_at"]


def test_mistakes_get_a_clear_message_and_exit_code(tmp_path: Path) -> None:
    config = cli_config(tmp_path)
    unknown = cli(config, "revoke", "42")
    assert unknown.returncode == 1
    assert "no API key with id or prefix 42" in unknown.stderr
    assert unknown.stdout == ""
    blank = cli(config, "create", "--name", " ")
    assert blank.returncode == 2
    assert "API key name" in blank.stderr
    assert cli(config, "create").returncode == 2  # --name is required

    elsewhere = cli_config(tmp_path, "mysql://db.example/dispatch")  # PostgreSQL is supported
    unsupported = cli(elsewhere, "list")
    assert unsupported.returncode == 2
    assert "database.url" in unsupported.stderr


def test_database_unavailable_exits_1(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dispatch.db").write_bytes(b"this is not a database\n" * 400)
    config = cli_config(tmp_path)
    failed = cli(config, "create", "--name", "app")
    assert failed.returncode == 1
    assert "cannot use the database" in failed.stderr
    assert not KEY.search(failed.stdout + failed.stderr)


async def test_a_revocation_by_the_cli_reaches_a_verifier_on_the_same_database(
    tmp_path: Path,
) -> None:
    """What a running daemon sees: the CLI's revocation refuses its next request."""
    config = cli_config(tmp_path)
    created = await trio.to_thread.run_sync(cli, config, "create", "--name", "app", "--json")
    key = json.loads(created.stdout)["key"]
    database = SqliteDatabase(tmp_path / "data" / "dispatch.db")
    try:
        verifier = ApiKeyVerifier(ApiKeyStore(database), ApiKeyAudit(lambda entry: None))
        for _ in range(2):  # argon2, then the cache
            assert isinstance(await verifier.verify(key, "127.0.0.1"), VerifiedKey)
        revoked = await trio.to_thread.run_sync(cli, config, "revoke", prefix_of(key))
        assert revoked.returncode == 0, revoked.stderr
        answer = await verifier.verify(key, "127.0.0.1")
        assert not isinstance(answer, VerifiedKey)
        assert answer.kind == "revoked"
    finally:
        await database.aclose()
