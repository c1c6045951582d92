"""The audit log as an operator meets it: a real daemon, real clients, the real database.

Every kind of entry is made the way it happens in production — ``dispatch api-key``,
``dispatch spool retry|delete`` over the control socket and without a daemon, SMTP AUTH
guesses over smtplib, bad keys and a rate limit over httpx, SIGHUP with a changed file —
and read back from ``audit_log`` in SQLite and through ``dispatch audit``. Throttling must
leave one row per throttled address or key, however many requests it refused.
"""

from __future__ import annotations

import base64
import json
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatch.security.passwords import hash_password
from dispatch.spool import MessageState
from dispatch.spool.testing import write_pair
from tests.conftest import Daemon, free_port
from tests.support.config import Ports, base_config, smtp_relay, write_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"
RELAY_SECRET = "relay-password-one"


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatch", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def audit_rows(root: Path) -> list[tuple[str, str, str, str]]:
    """(category, level, actor, message) of every row, in the order written."""
    with closing(sqlite3.connect(root / "data" / "dispatch.db")) as connection:
        rows = connection.execute(
            "SELECT category, level, actor, message FROM audit_log ORDER BY id"
        ).fetchall()
    return [(c, level, actor or "", m) for c, level, actor, m in rows]


def rows_matching(root: Path, text: str) -> list[tuple[str, str, str, str]]:
    return [row for row in audit_rows(root) if text in row[3]]


def config_for(root: Path, ports: Ports, relay_port: int, **extra: Any) -> dict[str, Any]:
    return base_config(
        root,
        ports,
        listener={
            "allow_unsecure_auth": True,
            "users": [{"username": "alice", "password_hash": hash_password(PASSWORD)}],
        },
        api={"rate_limit_per_key": 2},
        spool={"max_retries": 0},
        relays=[smtp_relay("upstream", relay_port, password=RELAY_SECRET, username="u")],
        default_relay="upstream",
        **extra,
    )


def submit(port: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail("app@example.test")
        client.rcpt("someone@example.org")
        code, text = client.data(b"Subject: audit\r\n\r\nhello\r\n")
        assert code == 250, (code, text)
        return text.split()[-1].decode()


def auth_attempt(port: int, password: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        plain = base64.b64encode(f"\0alice\0{password}".encode()).decode()
        return client.docmd("AUTH PLAIN", plain)[0]


def api_statuses(port: int, key: str, count: int) -> list[int]:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        return [
            client.get(
                "/api/v1/messages/spl_01J00000000000000000000000", headers=headers
            ).status_code
            for _ in range(count)
        ]


def test_the_daemon_audits_operators_reloads_and_throttling_once_each(
    start_daemon: Any, tmp_path: Path
) -> None:
    ports, relay_port = Ports.pick(), free_port()  # nothing listens on the relay's port
    config = tmp_path / "dispatch.toml"
    settings = config_for(tmp_path, ports, relay_port)
    write_config(config, settings)
    created = cli(config, "api-key", "create", "--name", "audited app", "--json")
    assert created.returncode == 0, created.stderr
    key, prefix = (json.loads(created.stdout)[name] for name in ("key", "prefix"))

    daemon: Daemon = start_daemon(config.read_text())
    daemon.wait_for("all components ready")
    spool = tmp_path / "spool"
    first, second = submit(ports.smtp), submit(ports.smtp)
    wait_until(
        lambda: all((spool / "failed" / f"{i}.json").exists() for i in (first, second)),
        what="both messages failed (the upstream is down, max_retries = 0)",
    )
    for action, message_id in (("retry", first), ("delete", second)):
        done = cli(config, "spool", action, message_id)
        assert done.returncode == 0, done.stderr

    # Ten AUTH guesses: five failures, then the address is throttled.
    codes = [auth_attempt(ports.smtp, f"guess {n}") for n in range(10)]
    assert codes == [535] * 5 + [454] * 5
    bad_key = "dsp_live_" + "A" * 43
    assert api_statuses(ports.api, bad_key, 8) == [401] * 5 + [429] * 3
    assert api_statuses(ports.api, key, 5) == [404, 404, 429, 429, 429]

    settings["listener"]["max_connections"] = 77
    changed_relay = smtp_relay("upstream", relay_port, password="relay-password-two", username="u")
    settings["relays"] = [changed_relay]
    settings["webui"]["port"] = free_port()  # needs a restart: named as such
    write_config(config, settings)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("configuration reloaded")
    config.write_text("[listener]\nmax_connections = -5\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("reload rejected")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    write_config(config, settings)  # valid again, for the commands below

    rows = audit_rows(tmp_path)
    kinds = Counter((category, level) for category, level, _, _ in rows)
    client = "uid "  # the control socket's client, as the kernel names it
    [created_row] = rows_matching(tmp_path, "created")
    assert created_row[:3] == ("ApiKey", "Notice", "cli")
    [retry] = rows_matching(tmp_path, f"spool retry {first}")
    [delete] = rows_matching(tmp_path, f"spool delete {second}")
    assert retry[:2] == delete[:2] == ("System", "Notice")
    assert retry[2].startswith(client)
    assert delete[2].startswith(client)
    [smtp_auth] = rows_matching(tmp_path, "SMTP AUTH")
    assert smtp_auth[:3] == ("Auth", "Warning", "127.0.0.1")
    [bad_keys] = rows_matching(tmp_path, "bad API keys")
    assert bad_keys[:3] == ("Auth", "Warning", "127.0.0.1")
    [limited] = rows_matching(tmp_path, "api.rate_limit_per_key")
    assert limited[:2] == ("ApiKey", "Notice")
    assert prefix in limited[3]
    assert key not in limited[3]
    [reloaded] = rows_matching(tmp_path, "configuration reloaded")
    assert reloaded[:3] == ("Config", "Notice", "SIGHUP")
    assert "applied listener.max_connections, relays[0].password" in reloaded[3]
    assert "needing a restart: webui.port" in reloaded[3]
    [rejected] = rows_matching(tmp_path, "rejected")
    assert rejected[:2] == ("Config", "Warning")
    assert not any("relay-password" in message for *_, message in rows)
    assert kinds[("System", "Notice")] == 4  # started, retry, delete, stopping
    assert "stopping" in [m for c, _, _, m in rows if c == "System" and "Dispatch" in m][-1]

    printed = cli(config, "audit", "--category", "auth")
    assert printed.returncode == 0, printed.stderr
    header, *lines = printed.stdout.splitlines()
    assert header.split() == ["TIME", "CATEGORY", "LEVEL", "ACTOR", "MESSAGE"]
    assert len(lines) == 2
    assert "SMTP AUTH" in lines[0]
    assert "bad API keys" in lines[1]


def test_spool_commands_without_a_daemon_audit_even_with_the_database_locked(
    start_daemon: Any, tmp_path: Path
) -> None:
    ports = Ports.pick()
    config = tmp_path / "dispatch.toml"
    settings = config_for(tmp_path, ports, free_port())
    write_config(config, settings)
    spool = tmp_path / "spool"
    deleted = write_pair(spool, MessageState.FAILED)
    retried = write_pair(spool, MessageState.FAILED)
    done = cli(config, "spool", "delete", deleted.id)
    assert done.returncode == 0, done.stderr
    assert rows_matching(tmp_path, f"spool delete {deleted.id}")[0][:3] == (
        "System",
        "Notice",
        "cli",
    )

    # Another process holds the database's write lock for longer than the CLI waits: the
    # entry goes to the daemon's journal, and the daemon's next start writes it.
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with closing(sqlite3.connect(tmp_path / "data" / "dispatch.db", isolation_level=None)) as c:
            c.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(60)
            c.execute("COMMIT")

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        done = cli(config, "spool", "retry", retried.id)
    finally:
        release.set()
        holder.join()
    assert done.returncode == 0, done.stderr
    assert "waits in" in done.stderr
    assert "message-log.journal" in done.stderr
    assert (tmp_path / "spool" / "incoming" / f"{retried.id}.json").exists()
    assert rows_matching(tmp_path, f"spool retry {retried.id}") == []
    assert (tmp_path / "data" / "message-log.journal").exists()

    daemon: Daemon = start_daemon(config.read_text())
    daemon.wait_for("all components ready")
    wait_until(
        lambda: bool(rows_matching(tmp_path, f"spool retry {retried.id}")),
        what="the journaled audit entry replayed into the database",
    )
    [row] = rows_matching(tmp_path, f"spool retry {retried.id}")
    assert row[:3] == ("System", "Notice", "cli")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
