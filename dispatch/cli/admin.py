"""``dispatch set-admin-password``: the dashboard's admin password, straight in the database.

Sets the password on first run (instead of the dashboard's setup page) or changes it (a
forgotten one, a departing colleague). The password is read as ``hash-password`` reads one
(:func:`dispatch.cli.prompt.read_new_password`: asked twice without echo on a terminal, else
stdin's first line), needs at least 12 characters, and is stored as an argon2id hash in the
``admin`` table of ``database.url``. Storing it ends every dashboard session: each browser logs
in again.

Needs no daemon: a running one shares the database and reads the password at the next login.
The audit entry (actor ``cli``) is written into the database itself, as ``api-key`` writes
its own (:func:`dispatch.cli.audit.write_entries`).

Exit codes: 0 set, 1 the database is unavailable or no password was given, 2 the password is
refused (too short, the two differ) or the configuration is invalid, 130 interrupted.
"""

from __future__ import annotations

import sys
from typing import Final

import trio

from dispatch.cli.audit import write_entries
from dispatch.cli.prompt import read_new_password
from dispatch.config import Settings
from dispatch.security.passwords import hash_password
from dispatch.storage import DatabaseUnavailableError, Store, audit, open_store

ACTOR: Final = "cli"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2


def main(settings: Settings, *, from_stdin: bool) -> int:
    """Run ``set-admin-password``; return the exit code."""
    password = read_new_password(from_stdin, nothing_done="nothing changed")
    if isinstance(password, int):
        return password
    try:
        store = open_store(settings.database.url, settings.data_dir)
    except ValueError as exc:
        print(f"dispatch: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return trio.run(_store_password, store, password)


async def _store_password(store: Store, password: str) -> int:
    try:
        hashed = await trio.to_thread.run_sync(hash_password, password)
        first_time = await store.admin.password_hash() is None
        await store.admin.set_password_hash(hashed)
        entry = audit.admin_password_set(first_time=first_time, actor=ACTOR)
        await write_entries(store, [entry], may_journal=False)  # a daemon may own the journal
    except DatabaseUnavailableError as exc:
        print(f"dispatch: cannot use the database: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        with trio.CancelScope(shield=True):
            await store.database.aclose()
    if first_time:
        print("Admin password set: log in to the dashboard with it.")
    else:
        print("Admin password changed: every dashboard session has ended; log in again.")
    return EXIT_OK
