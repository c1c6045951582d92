"""``dispatch spool list|show|retry|delete`` and ``send-test``: through the running daemon.

``spool retry --all`` (the ``spool.flush`` command) makes all waiting mail due now.

With a daemon running, the command goes over its control socket, so the daemon's in-memory
index and the files never disagree (and the daemon writes the audit entry of a retry or a
delete). Without one, the command takes the spool lock (so no daemon can start meanwhile),
opens the spool itself, acts on the files and writes the audit entry itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import trio

from dispatch.cli.audit import record_without_daemon
from dispatch.config import Settings
from dispatch.control.client import DaemonUnreachable, request
from dispatch.control.server import Operations, handle
from dispatch.spool import Spool
from dispatch.spool.lock import SpoolLock, SpoolLockedError
from dispatch.storage import AuditEntry


async def _run_here(settings: Settings, command: dict[str, Any]) -> dict[str, Any]:
    """Run ``command`` on the spool opened here (the caller holds the spool lock); its audit
    entries go straight to the database, or to the daemon's journal if that is down."""
    spool = await Spool.open(Path(settings.spool.directory))
    audit: list[AuditEntry] = []
    answer = await handle(Operations(spool, lambda: settings, audit=audit.append), command)
    await record_without_daemon(settings, audit)
    return answer


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    spool = commands.add_parser(
        "spool", parents=[common], help="look at and act on spooled messages"
    )
    spool_actions = spool.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = spool_actions.add_parser("list", parents=[common], help="list spooled messages")
    listing.add_argument(
        "--state",
        choices=("incoming", "processing", "failed", "captured"),
        help="only these; captured: the Local inbox (mail the local relay delivered)",
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    for action, text in (
        ("show", "show one message's envelope, per-recipient results and file path"),
        ("retry", "move a failed message back to incoming, attempts reset; --all: flush"),
        ("delete", "delete a message that is not being delivered"),
    ):
        one = spool_actions.add_parser(action, parents=[common], help=text)
        if action == "retry":
            _add_retry_options(one)
        else:
            one.add_argument("id", help="message id (spl_…)")
        one.add_argument("--json", action="store_true", help="print JSON")


def _add_retry_options(retry: argparse.ArgumentParser) -> None:
    retry.description = (
        "retry ID: move a failed message back to incoming, due now, attempts reset. "
        "retry --all: make every waiting message due now and move failed ones back to "
        "incoming (like postqueue -f), e.g. after an upstream was fixed; needs the "
        "running daemon."
    )
    retry.add_argument("id", nargs="?", help="message id (spl_…), or --all")
    retry.add_argument("--all", dest="all_messages", action="store_true", help="every message")
    retry.add_argument("--relay", help="with --all: only mail routed through this relay")
    retry.add_argument(
        "--state",
        choices=("incoming", "failed"),
        help="with --all: only waiting (incoming) or only failed messages",
    )


def add_send_test_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    send_test = commands.add_parser(
        "send-test",
        parents=[common],
        help="send a test message through one relay of the running daemon",
    )
    send_test.add_argument("--relay", required=True, help="relay name from the configuration")
    send_test.add_argument("--to", required=True, metavar="ADDR", help="recipient address")
    send_test.add_argument(
        "--from",
        dest="sender",
        default="dispatch-test@localhost",
        metavar="ADDR",
        help="sender address (default: dispatch-test@localhost)",
    )
    send_test.add_argument("--json", action="store_true", help="print JSON")


def execute(settings: Settings, command: str, args: dict[str, Any]) -> dict[str, Any]:
    """The answer of the daemon, or of the spool opened here when no daemon runs."""
    try:
        return request(Path(settings.data_dir), command, args)
    except DaemonUnreachable:
        pass
    directory = Path(settings.spool.directory)
    try:
        lock = SpoolLock.acquire(directory)
    except SpoolLockedError as exc:
        return {"ok": False, "error": f"{exc}, but its control socket does not answer"}
    with lock:
        return trio.run(_run_here, settings, {"command": command, "args": args})


def _when(timestamp: float) -> str:
    if not timestamp:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _print_list(result: dict[str, Any]) -> None:
    counts = result["counts"]
    if "captured" in counts:
        _print_captured(result)
        return
    print(
        f"{counts['incoming']} incoming ({counts['retrying']} retrying), "
        f"{counts['processing']} processing, {counts['failed']} failed"
    )
    for entry in result["entries"]:
        state = "retrying" if entry["retrying"] else entry["state"]
        print(
            f"{entry['id']}  {state:<10} {_when(entry['received_at'])}  "
            f"attempts {entry['attempts']}  next {_when(entry['next_attempt_at'])}  "
            f"<{entry['mail_from']}> → {len(entry['recipients'])} recipient(s)"
        )


def _print_captured(result: dict[str, Any]) -> None:
    counts, entries = result["counts"], result["entries"]
    shown = "" if len(entries) == counts["captured"] else f", the newest {len(entries)} shown"
    print(f"{counts['captured']} captured in {result['directory']}{shown}")
    if counts["unreadable"]:
        print(f"{counts['unreadable']} captured envelope(s) could not be read", file=sys.stderr)
    for entry in entries:
        print(
            f"{entry['id']}  captured   {_when(entry['captured_at'])}  "
            f"<{entry['mail_from']}> → {len(entry['recipients'])} recipient(s)  {entry['path']}"
        )


def _print_show(entry: dict[str, Any]) -> None:
    for key in ("id", "state", "mail_from", "source", "peer_ip", "auth_identity", "size"):
        print(f"{key:<16} {entry.get(key)}")
    print(f"{'received':<16} {_when(entry['received_at'])}")
    if "captured_at" in entry:
        print(f"{'captured':<16} {_when(entry['captured_at'])}")
    print(f"{'attempts':<16} {entry['attempts']}")
    print(f"{'next attempt':<16} {_when(entry['next_attempt_at'])}")
    print(f"{'last error':<16} {entry.get('last_error') or '-'}")
    results = entry.get("recipient_results") or {}
    for recipient in entry["recipients"]:
        result = results.get(recipient)
        outcome = (
            f"{result['status']} via {result['relay']}: {result['response']}"
            if result
            else ("captured" if entry["state"] == "captured" else "pending")
        )
        print(f"{'recipient':<16} {recipient}  {outcome}")
    print(f"{'file':<16} {entry['path']}")
    if "captured_path" in entry:
        print(f"{'captured copy':<16} {entry['captured_path']}")


def _print_flush(result: dict[str, Any]) -> None:
    count = result["made_due"]
    print(
        f"{count} message{'' if count == 1 else 's'} made due ({result['incoming']} waiting, "
        f"{result['failed']} failed back to incoming)"
    )
    if result["already_due"]:
        print(f"{result['already_due']} more were due already")
    if result["busy"]:
        print(f"{result['busy']} being delivered or changed right now, left alone")


def main(
    settings: Settings,
    action: str,
    message_id: str | None,
    state: str | None,
    as_json: bool,
    *,
    all_messages: bool = False,
    relay: str | None = None,
) -> int:
    args: dict[str, Any] = {"id": message_id} if message_id else {}
    if state:
        args["state"] = state
    if relay:
        args["relay"] = relay
    command = "spool.flush" if all_messages else f"spool.{action}"
    answer = execute(settings, command, args)
    if not answer.get("ok"):
        print(f"dispatch: {answer.get('error')}", file=sys.stderr)
        return 1
    result = answer["result"]
    if as_json:
        print(json.dumps(result, indent=2))
    elif action == "list":
        _print_list(result)
    elif action == "show":
        _print_show(result)
    elif all_messages:
        _print_flush(result)
    elif action == "retry":
        print(f"{result['id']}: moved back to incoming, due now")
    else:
        print(f"{result['id']}: deleted")
    return 0


def send_test(settings: Settings, relay: str, to: str, sender: str, as_json: bool) -> int:
    print(f"sending a test message to <{to}> through relay {relay}…", file=sys.stderr)
    answer = execute(settings, "send-test", {"relay": relay, "to": to, "from": sender})
    if not answer.get("ok"):
        print(f"dispatch: {answer.get('error')}", file=sys.stderr)
        return 1
    result = answer["result"]
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        remote = f" (upstream id {result['remote_id']})" if result.get("remote_id") else ""
        print(f"{result['outcome']}: {result['response']}{remote}")
    return 0 if result["outcome"] == "delivered" else 1
