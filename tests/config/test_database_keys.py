"""The [database] keys of scale-out (docs/scaling.md): a PostgreSQL URL is accepted, a bad
node id or pool size is refused naming its key, a generated node id is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.config import ConfigError, load_settings
from dispatch.storage.nodes import NODE_ID_FILE, resolve_node_id


def load(toml: str, tmp_path: Path) -> object:
    path = tmp_path / "dispatch.toml"
    path.write_text(toml)
    return load_settings(path)


def test_a_postgresql_url_and_the_pool_keys_load(tmp_path: Path) -> None:
    settings = load(
        '[database]\nurl = "postgresql://dispatch:pw@db.example.test:5432/mail"\n'
        'node_id = "relay-1.eu"\npool_size = 8\nstatement_timeout_seconds = 2.5\n',
        tmp_path,
    )
    database = settings.database  # type: ignore[attr-defined]
    assert (database.node_id, database.pool_size, database.statement_timeout_seconds) == (
        "relay-1.eu",
        8,
        2.5,
    )


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('node_id = "has space"', "database.node_id: 'has space': use 1 to 63 letters"),
        ('node_id = "-dash-first"', "database.node_id: '-dash-first'"),
        (f'node_id = "{"x" * 64}"', "database.node_id"),
        ("pool_size = 0", "database.pool_size"),
        ("statement_timeout_seconds = 0", "database.statement_timeout_seconds"),
    ],
)
def test_bad_database_keys_are_named(toml: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(f"[database]\n{toml}\n", tmp_path)
    problems = [str(p) for p in caught.value.problems]
    assert any(expected in p for p in problems), problems


def test_a_generated_node_id_is_kept_and_a_broken_file_is_named(tmp_path: Path) -> None:
    first = resolve_node_id("", tmp_path / "data")
    assert first == resolve_node_id("", tmp_path / "data")
    assert (tmp_path / "data" / NODE_ID_FILE).read_text().strip() == first
    assert resolve_node_id("configured-1", tmp_path / "data") == "configured-1"
    (tmp_path / "data" / NODE_ID_FILE).write_text("not a node id!\n")
    with pytest.raises(ValueError, match="node-id: not a node id") as caught:
        resolve_node_id("", tmp_path / "data")
    assert "database.node_id" in str(caught.value)
