"""``dispatch api-key create|list|revoke``: API keys, straight in the database (SPEC §4, §12).

These commands need no daemon: they open the database named by ``database.url`` as the
daemon does, act, and close it. A running daemon shares that database and looks a key up on
every request, so a key created or revoked here counts from its next request on.

Each change writes its audit entry (actor ``cli``) into the database itself, in a second
short transaction: the daemon's log writer and its journal belong to the daemon. A change
whose audit entry cannot be written is still done; the command says so on stderr.

Exit codes: 0 done (revoking a revoked key is done), 1 unknown key or database unavailable,
2 invalid name or configuration.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Final

import trio

from dispatch.cli.audit import write_entries
from dispatch.config import Settings
from dispatch.security.api_keys import ApiKeyVerifier
from dispatch.security.key_rows import KeyRecord
from dispatch.storage import (
    ApiKeyRecord,
    AuditEntry,
    DatabaseUnavailableError,
    Store,
    UnknownApiKeyError,
    open_store,
)
from dispatch.storage.audit import ApiKeyAudit

ACTOR: Final = "cli"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2
SHOWN_ONCE: Final = "Copy it now: it will not be shown again (only its hash is stored)."


def main(
    settings: Settings, action: str, *, name: str | None, reference: str | None, as_json: bool
) -> int:
    """Run ``api-key <action>``; return the exit code."""
    try:
        store = open_store(settings.database.url, settings.data_dir)
    except ValueError as exc:
        print(f"dispatch: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return trio.run(_main, store, action, name, reference, as_json)


async def _main(
    store: Store, action: str, name: str | None, reference: str | None, as_json: bool
) -> int:
    audit: list[AuditEntry] = []
    keys = ApiKeyVerifier(store.api_keys, ApiKeyAudit(audit.append))
    try:
        if action == "create":
            assert name is not None  # argparse requires --name
            record, key = await keys.create(name, actor=ACTOR)
            _print_created(record, key, as_json)
        elif action == "revoke":
            assert reference is not None  # argparse requires ID
            record, first_time = await keys.revoke(reference, actor=ACTOR)
            _print_revoked(record, first_time=first_time, as_json=as_json)
        else:
            _print_list(await store.api_keys.list(), as_json)
        await write_entries(store, audit, may_journal=False)  # a daemon may own the journal
    except ValueError as exc:
        print(f"dispatch: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except UnknownApiKeyError as exc:
        print(f"dispatch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DatabaseUnavailableError as exc:
        print(f"dispatch: cannot use the database: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        with trio.CancelScope(shield=True):
            await store.database.aclose()
    return EXIT_OK


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _print_created(record: KeyRecord, key: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**record.public(), "key": key, "warning": SHOWN_ONCE}, indent=2))
        return
    print(f"Created API key {record.id} {record.name!r} (prefix {record.prefix}):")
    print()
    print(f"    {key}")
    print()
    print(SHOWN_ONCE)


def _print_revoked(record: KeyRecord, *, first_time: bool, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**record.public(), "already_revoked": not first_time}, indent=2))
        return
    label = f"API key {record.id} {record.name!r} ({record.prefix})"
    if first_time:
        print(f"{label} revoked: requests with it are refused from now on.")
    else:
        print(f"{label} was already revoked at {_when(record.revoked_at)}; nothing changed.")


def _print_list(records: list[ApiKeyRecord], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"keys": [record.public() for record in records]}, indent=2))
        return
    if not records:
        print("No API keys. Create one with: dispatch api-key create --name NAME")
        return
    header = ("ID", "NAME", "PREFIX", "CREATED", "LAST USED", "REVOKED")
    rows = [
        (
            str(r.id),
            r.name,
            r.prefix,
            _when(r.created_at),
            _when(r.last_used_at),
            _when(r.revoked_at),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
