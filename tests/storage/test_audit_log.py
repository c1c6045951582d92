"""The audit log's entries (dispatch/storage/audit.py) and their way into a real database.

Each kind has its category and severity in one place; reload entries name keys, never
values; text a peer chose cannot forge a line; and an entry written while the database is
down waits in the journal and lands once it is back, even after a restart.
"""

from __future__ import annotations

from pathlib import Path

import trio

from dispatch.config.live import LiveSettings, ReloadResult
from dispatch.config.loader import load_settings
from dispatch.config.render import changed_keys
from dispatch.storage import AuditEntry, audit
from dispatch.storage.api_keys import ApiKeyRecord
from tests.storage.conftest import Outage, make_store, query, running
from tests.support.waiting import wait_until_async

KEY = ApiKeyRecord(id=7, name="billing", prefix="dsp_live_abcd", created_at=1.0)


def test_each_kind_has_its_category_and_severity() -> None:
    kinds: dict[str, tuple[AuditEntry, str, str]] = {
        "started": (audit.daemon_started("1.0", "/etc/d.toml", 42), "System", "Notice"),
        "stopping": (audit.daemon_stopping("1.0", 42), "System", "Notice"),
        "reloaded": (
            audit.config_reloaded("/d.toml", ["a"], [], actor="SIGHUP"),
            "Config",
            "Notice",
        ),
        "rejected": (
            audit.config_reload_rejected("/d.toml", 2, actor="SIGHUP"),
            "Config",
            "Warning",
        ),
        "created": (audit.api_key_created(KEY, actor="cli"), "ApiKey", "Notice"),
        "revoked": (
            audit.api_key_revoked(KEY, first_time=True, actor="cli", at=2.0),
            "ApiKey",
            "Notice",
        ),
        "revoked again": (
            audit.api_key_revoked(KEY, first_time=False, actor="cli", at=2.0),
            "ApiKey",
            "Info",
        ),
        "rate limited": (
            audit.api_key_rate_limited(KEY.prefix, 100, 12.0, "127.0.0.1"),
            "ApiKey",
            "Notice",
        ),
        "bad keys": (audit.api_key_failures_throttled("127.0.0.9", 5, 300, 290), "Auth", "Warning"),
        "auth address": (
            audit.smtp_auth_address_throttled("127.0.0.9", 5, 300, 300),
            "Auth",
            "Warning",
        ),
        "auth user": (
            audit.smtp_auth_user_throttled("alice", 20, 300, 280, "127.0.0.9"),
            "Auth",
            "Warning",
        ),
        "retry": (audit.spool_retried("spl_1", actor="cli"), "System", "Notice"),
        "flush": (audit.spool_flushed(3, None, None, actor="cli"), "System", "Notice"),
        "delete": (audit.spool_deleted("spl_1", "failed", actor="cli"), "System", "Notice"),
        "suspended": (audit.relay_suspended("up", "timed out", 30), "Relay", "Warning"),
        "resumed": (audit.relay_resumed("up"), "Relay", "Info"),
    }
    for name, (entry, category, level) in kinds.items():
        assert (entry.category, entry.level) == (category, level), name
        assert entry.message, name
        assert entry.actor, name
    assert kinds["created"][0].at == KEY.created_at  # when the key was made, not later
    assert "dsp_live_abcd" in kinds["created"][0].message


def write_config(path: Path, password: str, max_connections: int, ports: str = "[2525]") -> None:
    path.write_text(f"""
[listener]
ports = {ports}
max_connections = {max_connections}
[[relays]]
name = "upstream"
kind = "smtp"
host = "127.0.0.1"
username = "relay-user"
password = "{password}"
""")


async def test_a_reload_entry_names_the_changed_keys_never_their_values(tmp_path: Path) -> None:
    config = tmp_path / "dispatch.toml"
    write_config(config, "first-secret-value", 100)
    live = LiveSettings(load_settings(config), config)
    write_config(config, "second-secret-value", 7, ports="[2526]")
    result = await live.reload()
    assert result.changed == ("listener.max_connections", "relays[0].password")
    assert result.needs_restart == ("listener.ports",)
    entry = audit.config_reload(result, actor="SIGHUP")
    assert entry.message == (
        f"configuration reloaded from {config}: applied listener.max_connections, "
        "relays[0].password; changed but needing a restart: listener.ports"
    )
    assert "secret" not in entry.message
    assert entry.actor == "SIGHUP"

    config.write_text("[listener]\nmax_connections = -1\n")
    rejected = audit.config_reload(await live.reload(), actor="SIGHUP")
    assert (rejected.level, rejected.category) == ("Warning", "Config")
    assert "rejected (1 problem" in rejected.message
    assert live.current.listener.max_connections == 7  # kept

    unchanged = audit.config_reload(ReloadResult(applied=False, path=config), actor="SIGHUP")
    assert unchanged.message.endswith(": no live key changed")
    defaults = audit.config_reload(ReloadResult(applied=False), actor="SIGHUP")
    assert "built-in defaults" in defaults.message


def test_changed_keys_compares_tables_and_lists_of_tables() -> None:
    before = load_settings(None)
    assert changed_keys(before, before) == []
    fewer = before.relays[:0]
    assert changed_keys(before.relays, fewer, "relays") == ["relays"]  # a list that shrank


def test_text_a_peer_chose_cannot_forge_a_line_or_grow_without_bound() -> None:
    username = "mallory\r\n2026-01-01 Config Notice forged\x1b[2J" + "x" * 500
    entry = audit.smtp_auth_user_throttled(username, 20, 300, 300, "127.0.0.9")
    assert "\r" not in entry.message
    assert "\n" not in entry.message
    assert "\x1b" not in entry.message
    assert "\\r\\n" in entry.message
    assert len(entry.message) < 400
    reason = audit.relay_suspended("up", "421 " + "y" * 5000, 30)
    assert len(reason.message) < 300


async def test_entries_written_while_the_database_is_down_land_after_a_restart(
    tmp_path: Path, outage: Outage
) -> None:
    db = outage.db
    entries = [audit.spool_deleted(f"spl_{n}", "failed", actor="uid 0 (pid 1)") for n in range(3)]
    entries.append(audit.smtp_auth_address_throttled("127.0.0.9", 5, 300, 300))
    store = make_store(db, tmp_path / "data")
    async with running(store):
        for entry in entries:
            store.log.audit(entry)
        await wait_until_async(lambda: store.log.journaled_total == len(entries))
        assert not store.log.database_reachable
    # The store stopped with the database still down: the journal keeps the entries.
    assert store.log.journal_path.exists()
    outage.end()

    again = make_store(db, tmp_path / "data")  # the next run of the daemon
    async with running(again):
        with trio.fail_after(10):
            await again.log.wait_until_written()
        read = await again.queries.audit_entries()
    assert not again.log.journal_path.exists()
    assert sorted(e.event_id for e in read) == sorted(e.event_id for e in entries)
    assert {(e.category, e.level, e.message) for e in read} == {
        (e.category, e.level, e.message) for e in entries
    }
    rows = query(db, "SELECT COUNT(*) FROM audit_log")
    assert rows == [(len(entries),)]  # each once
