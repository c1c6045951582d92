"""``dispatch suppression list|remove ADDRESS``: the suppression list, straight in the database.

Like ``api-key``, these need no daemon: they open the database named by ``database.url``,
act, and close it. A running daemon re-reads the list at most every few seconds
(``storage/suppression.py``), so an address removed here is mailed again from then on.

Exit codes: 0 done, 1 no such entry (remove) or database unavailable, 2 invalid configuration.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Final

import trio

from dispatch.config import Settings
from dispatch.storage import Store, open_store
from dispatch.storage.suppression import Suppression, SuppressionList

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    suppression = commands.add_parser(
        "suppression",
        parents=[common],
        help="list or remove addresses suppressed after a hard bounce",
    )
    actions = suppression.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        parents=[common],
        help="the addresses suppressed now, newest first",
        description="Addresses not mailed because they bounced hard ([suppression], "
        "docs/deliverability.md), with why and until when. The daemon need not run.",
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    remove = actions.add_parser(
        "remove",
        parents=[common],
        help="mail ADDRESS again",
        description="Remove ADDRESS from the suppression list; a running daemon mails it "
        "again within a few seconds.",
    )
    remove.add_argument("address", metavar="ADDRESS", help="the suppressed address")
    remove.add_argument("--json", action="store_true", help="print JSON")


def main(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``suppression <action>``; return the exit code."""
    try:
        store = open_store(settings.database.url, settings.data_dir)
    except ValueError as exc:
        print(f"dispatch: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return trio.run(_main, store, args.action, getattr(args, "address", None), args.json)


async def _main(store: Store, action: str, address: str | None, as_json: bool) -> int:
    try:
        if action == "remove":
            assert address is not None  # argparse requires ADDRESS
            removed = await store.suppressions.remove(address)
            if as_json:
                print(json.dumps({"address": address, "removed": removed}))
            elif removed:
                print(f"{address} removed from the suppression list: it is mailed again.")
            else:
                print(
                    f"dispatch: {address} is not on the suppression list "
                    "(see: dispatch suppression list)",
                    file=sys.stderr,
                )
            return EXIT_OK if removed else EXIT_FAILED
        _print_list(await store.suppressions.list(), as_json)
    except SuppressionList.unavailable_errors as exc:
        print(f"dispatch: cannot use the database ({store.database.description}): {exc}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    finally:
        with trio.CancelScope(shield=True):
            await store.database.aclose()
    return EXIT_OK


def _when(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _print_list(entries: list[Suppression], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"suppressions": [e.public() for e in entries]}, indent=2))
        return
    if not entries:
        print("No suppressed addresses.")
        return
    header = ("ADDRESS", "UNTIL", "SINCE", "MESSAGE", "REASON")
    rows = [
        (e.address, _when(e.expires_at), _when(e.created_at), e.message_id or "-", e.reason)
        for e in entries
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]).rstrip())
