"""``dispatch audit``: the audit log, and how commands without the daemon write to it.

``dispatch audit [--since DURATION|TIMESTAMP] [--category NAME] [--limit N] [--json]`` reads
the ``audit_log`` table of ``database.url`` (no daemon needed) and prints the newest
``--limit`` entries (default :data:`DEFAULT_LIMIT`) **oldest first**, so the newest entry is
the last line, as in a log file. Entries the daemon holds in its journal because the database
was down are not in the table yet: the command says how many records wait there.

Commands that change something without the daemon (``api-key create|revoke``, ``spool
retry|delete`` with no daemon running) write their entries with :func:`write_entries`
straight into the database, since the daemon's log writer is not theirs.

Exit codes: 0 printed (also when nothing matched), 1 the database cannot be read,
2 a bad argument or configuration.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

import trio

from dispatch.config import Settings
from dispatch.logs import printable
from dispatch.storage import (
    AUDIT_CATEGORIES,
    AuditCategory,
    AuditEntry,
    DatabaseUnavailableError,
    Store,
    open_store,
)
from dispatch.storage.journal import Journal
from dispatch.storage.log_batch import write_batch
from dispatch.storage.queries import MAX_SEARCH_LIMIT

DEFAULT_LIMIT: Final = 100
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2

_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION: Final = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
DURATIONS: Final = "a duration (30m, 24h, 7d, 1h30m)"
TIMESTAMPS: Final = "a timestamp (2026-12-01, 2026-12-01T08:00Z)"
SINCE_FORMS: Final = f"{DURATIONS} or {TIMESTAMPS}"


# -- arguments ----------------------------------------------------------------------------


def parse_since(text: str, *, now: float) -> float:
    """``--since``: a duration back from ``now`` or a timestamp; Unix time. A timestamp
    without a zone is UTC. Raises :class:`ValueError` saying what is accepted."""
    value = text.strip().lower()
    if _DURATION.fullmatch(value):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
        return now - seconds
    if value.replace(".", "", 1).isdigit():
        raise ValueError(f"{text!r} has no unit: write {value}s, {value}m, {value}h or {value}d")
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither {DURATIONS} nor {TIMESTAMPS}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def parse_category(text: str) -> AuditCategory:
    """``--category``: one of the audit categories, in any letter case."""
    for category in AUDIT_CATEGORIES:
        if category.lower() == text.strip().lower():
            return category
    raise ValueError(
        f"{text!r} is not an audit category; use one of: {', '.join(AUDIT_CATEGORIES)}"
    )


def parse_limit(text: str) -> int:
    """``--limit``: how many entries, 1 to the most one query returns."""
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_SEARCH_LIMIT:
        raise ValueError(f"{text!r} is not a number of entries from 1 to {MAX_SEARCH_LIMIT}")
    return int(text)


# -- reading ------------------------------------------------------------------------------


def _argument[T](convert: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type=`` that reports ``convert``'s ValueError message as it is."""

    def checked(text: str) -> T:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return checked


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    audit = commands.add_parser(
        "audit",
        parents=[common],
        help="print the audit log (reloads, API keys, spool retries and deletes, throttling…)",
        description="Print the newest audit log entries, oldest first (the newest is the last "
        "line). Reads the database; no daemon needed.",
    )
    audit.add_argument(
        "--since",
        metavar="DURATION|TIMESTAMP",
        type=_argument(lambda text: parse_since(text, now=time.time())),
        help=f"only entries from then on: {SINCE_FORMS}; a timestamp without a zone is UTC",
    )
    audit.add_argument(
        "--category",
        metavar="NAME",
        type=_argument(parse_category),
        help=f"only this category: {', '.join(AUDIT_CATEGORIES)}",
    )
    audit.add_argument(
        "--limit",
        metavar="N",
        type=_argument(parse_limit),
        default=DEFAULT_LIMIT,
        help=f"the newest N entries (default {DEFAULT_LIMIT}, at most {MAX_SEARCH_LIMIT})",
    )
    audit.add_argument("--json", action="store_true", help="print JSON")


def main(
    settings: Settings,
    *,
    since: float | None,
    category: AuditCategory | None,
    limit: int,
    as_json: bool,
) -> int:
    """Run ``dispatch audit``; return the exit code."""
    try:
        store = open_store(settings.database.url, settings.data_dir)
    except ValueError as exc:
        print(f"dispatch: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        entries, waiting = trio.run(_read, store, since, category, limit)
    except DatabaseUnavailableError as exc:
        print(f"dispatch: cannot read the audit log: {exc}", file=sys.stderr)
        return EXIT_FAILED
    truncated = len(entries) > limit
    shown = list(reversed(entries[:limit]))  # newest last
    if as_json:
        document = {"entries": [_as_json(e) for e in shown], "truncated": truncated}
        print(json.dumps({**document, "waiting_in_journal": waiting}, indent=2))
        return EXIT_OK
    _print_table(shown, since=since, category=category)
    if truncated:
        print(
            f"dispatch: the newest {limit} entries are shown; narrow with --since or "
            f"--category, or raise --limit (at most {MAX_SEARCH_LIMIT})",
            file=sys.stderr,
        )
    if waiting:
        print(
            f"dispatch: {waiting} log records wait in {store.log.journal_path} for the database; "
            "audit entries among them appear once the daemon has written them",
            file=sys.stderr,
        )
    return EXIT_OK


async def _read(
    store: Store, since: float | None, category: AuditCategory | None, limit: int
) -> tuple[list[AuditEntry], int]:
    """Up to ``limit + 1`` entries, newest first (one more tells that there are more), and
    how many log records wait in the journal."""
    try:
        entries = await store.queries.audit_entries(
            category=category, since=since, limit=min(limit + 1, MAX_SEARCH_LIMIT)
        )
    finally:
        with trio.CancelScope(shield=True):
            await store.database.aclose()
    try:
        waiting = await trio.to_thread.run_sync(Journal(store.log.journal_path).count)
    except OSError:
        waiting = 0
    return entries, waiting


def _when(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _as_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": entry.at,
        "time": datetime.datetime.fromtimestamp(entry.at, datetime.UTC).isoformat(),
        "category": entry.category,
        "level": entry.level,
        "actor": entry.actor,
        "message": entry.message,
        "id": entry.event_id,
    }


def _print_table(
    entries: Sequence[AuditEntry], *, since: float | None, category: AuditCategory | None
) -> None:
    if not entries:
        scope = "".join(
            [
                f" in category {category}" if category else "",
                f" since {_when(since)}" if since is not None else "",
            ]
        )
        print(f"No audit entries{scope}.")
        return
    header = ("TIME", "CATEGORY", "LEVEL", "ACTOR", "MESSAGE")
    # Text from peers (usernames, upstream replies) is stored as sent: escape it for a terminal.
    rows = [
        (_when(e.at), e.category, e.level, printable(e.actor or "-"), printable(e.message))
        for e in entries
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))


# -- writing without the daemon -----------------------------------------------------------


async def write_entries(store: Store, entries: Sequence[AuditEntry], *, may_journal: bool) -> bool:
    """Write ``entries`` straight into ``store``'s database; return whether they are kept.

    When the database cannot take them and ``may_journal`` (the caller holds the spool lock,
    so no daemon runs and its log journal is nobody else's), they are appended to that
    journal, which the daemon replays into the database at its next start. Otherwise they are
    lost, and stderr says so: the change itself is done either way.
    """
    if not entries:
        return True
    try:
        await store.database.write(partial(write_batch, records=list(entries)))
        return True
    except DatabaseUnavailableError as exc:
        reason = str(exc)
    if may_journal:
        journal = Journal(store.log.journal_path)
        try:
            await trio.to_thread.run_sync(journal.append, list(entries))
        except OSError as exc:
            reason = f"{reason}; journal {journal.path}: {exc}"
        else:
            print(
                f"dispatch: the database is unavailable ({reason}); the audit entry waits in "
                f"{journal.path} and is written when the daemon next starts",
                file=sys.stderr,
            )
            return True
    print(f"dispatch: warning: done, but not written to the audit log: {reason}", file=sys.stderr)
    return False


async def record_without_daemon(settings: Settings, entries: Sequence[AuditEntry]) -> None:
    """For commands run while holding the spool lock (no daemon): :func:`write_entries` with
    the journal as the fallback, opening and closing the database of ``database.url``."""
    if not entries:
        return
    try:
        store = open_store(settings.database.url, settings.data_dir)
    except ValueError as exc:
        print(f"dispatch: warning: done, but not written to the audit log: {exc}", file=sys.stderr)
        return
    try:
        await write_entries(store, entries, may_journal=True)
    finally:
        with trio.CancelScope(shield=True):
            await store.database.aclose()
