"""Real traffic for the Overview, Message log and Spool tests: SMTP with smtplib, the HTTP API
with httpx (a key made by ``dispatch api-key create``), and reading the daemon's database and
spool directory as an operator would (plain sqlite3, file listings)."""

from __future__ import annotations

import json
import smtplib
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from tests.dashboard.support import DashboardDaemon
from tests.support.waiting import wait_until


def message_bytes(subject: str, sender: str, to: str, body: str = "Hello.") -> bytes:
    """A small message with CRLF line ends (smtplib sends bytes as they are)."""
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash(subject))}@example.com>\r\n\r\n{body}\r\n"
    ).encode()


def send_smtp(
    dashboard: DashboardDaemon, sender: str, recipients: list[str], subject: str
) -> bytes:
    """Send one message over SMTP; return the bytes sent."""
    data = message_bytes(subject, sender, recipients[0])
    with smtplib.SMTP("127.0.0.1", dashboard.ports.smtp, timeout=30) as smtp:
        smtp.sendmail(sender, recipients, data)
    return data


def create_api_key(dashboard: DashboardDaemon) -> tuple[str, str]:
    """``dispatch api-key create --json`` against the daemon's configuration: (key, prefix)."""
    done = subprocess.run(
        [sys.executable, "-m", "dispatch", "api-key", "create", "--name", "dashboard-tests",
         "--json", "--config", str(dashboard.root / "dispatch.toml")],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    created = json.loads(done.stdout)
    return str(created["key"]), str(created["prefix"])


def send_api(
    dashboard: DashboardDaemon,
    key: str,
    *,
    sender: str,
    to: list[str],
    subject: str,
    tags: list[str] | None = None,
) -> str:
    """Send one message through the HTTP API; return its id."""
    answer = httpx.post(
        f"http://127.0.0.1:{dashboard.ports.api}/api/v1/messages",
        headers={"Authorization": f"Bearer {key}"},
        json={"from": sender, "to": to, "subject": subject, "text": "Hello.",
              "tags": tags or []},
        timeout=30,
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def database(dashboard: DashboardDaemon) -> Path:
    return Path(dashboard.config["database"]["url"].removeprefix("sqlite:///"))


def rows(dashboard: DashboardDaemon, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Rows of a query on the daemon's database (a reader beside the daemon; WAL allows it)."""
    with closing(sqlite3.connect(database(dashboard), timeout=10)) as connection:
        return connection.execute(sql, params).fetchall()


def events_of(dashboard: DashboardDaemon, message_id: str) -> list[str]:
    found = rows(
        dashboard, "SELECT event FROM message_log WHERE message_id = ? ORDER BY at, id",
        (message_id,),
    )  # fmt: skip
    return [event for (event,) in found]


def wait_for_events(dashboard: DashboardDaemon, message_id: str, *wanted: str) -> None:
    """Wait until the message's log rows include each of ``wanted``."""
    wait_until(
        lambda: set(wanted) <= set(events_of(dashboard, message_id)),
        what=f"log rows {wanted} of {message_id}",
    )


def id_of_subject(dashboard: DashboardDaemon, subject: str) -> str:
    """The id of the message received with ``subject`` (waits for its ``received`` row)."""
    found: list[Any] = []

    def logged() -> bool:
        found[:] = rows(
            dashboard,
            "SELECT message_id FROM message_log WHERE event = 'received' AND subject = ?",
            (subject,),
        )
        return bool(found)

    wait_until(logged, what=f"the received row of {subject!r}")
    return str(found[0][0])


def spool_ids(dashboard: DashboardDaemon, state: str) -> set[str]:
    folder = dashboard.root / "spool" / state
    return {path.stem for path in folder.glob("*.json")}


def audit_messages(dashboard: DashboardDaemon) -> list[str]:
    return [message for (message,) in rows(dashboard, "SELECT message FROM audit_log")]
