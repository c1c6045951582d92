"""``dispatch webhooks recent``: the running daemon's latest webhook calls, newest first.

The calls are kept in the daemon's memory (``monitoring/webhook_activity.py``), so the command
asks the daemon over its control socket (``webhooks.recent``); without a daemon it says so.
What is still owed is in the outbox file, ``<data_dir>/webhooks/outbox.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from dispatch.config import Settings
from dispatch.control.client import DaemonUnreachable, request


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    webhooks = commands.add_parser(
        "webhooks", parents=[common], help="the running daemon's delivery webhook calls"
    )
    actions = webhooks.add_subparsers(dest="action", metavar="ACTION", required=True)
    recent = actions.add_parser(
        "recent",
        parents=[common],
        help="the latest webhook calls, newest first, and how many are owed",
        description="The running daemon's latest webhook calls (status, error, attempt), "
        "newest first, and the calls still owed in its outbox. Asks the daemon over its "
        "control socket. docs/webhooks.md explains the calls.",
    )
    recent.add_argument(
        "--limit", metavar="N", type=int, default=20, help="the newest N calls (default 20)"
    )
    recent.add_argument("--json", action="store_true", help="print JSON")


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _print(result: dict[str, Any]) -> None:
    print(
        f"{result['outbox_depth']} call(s) owed in the outbox"
        + (
            f", the oldest since {_when(result['oldest_pending_at'])}"
            if result["outbox_depth"]
            else ""
        )
    )
    calls = result["calls"]
    if not calls:
        print("no webhook calls since the daemon started")
    for call in calls:
        answer = f"HTTP {call['status']}" if call["status"] is not None else call["error"]
        if call["status"] is not None and call["result"] != "sent":
            answer = call["error"] or answer
        then = f", next in {call['next_attempt_in']:.1f} s" if call["next_attempt_in"] else ""
        print(
            f"{_when(call['at'])}  {call['result']:<8} {call['event']:<9} attempt "
            f"{call['attempt']}  {call['duration_ms']:.0f} ms  {call['url']}  "
            f"event {call['event_id']}  message {call['message_id'] or '-'}  {answer}{then}"
        )


def recent(settings: Settings, limit: int, as_json: bool) -> int:
    try:
        answer = request(Path(settings.data_dir).absolute(), "webhooks.recent", {"limit": limit})
    except DaemonUnreachable as exc:
        outbox = Path(settings.data_dir).absolute() / "webhooks" / "outbox.jsonl"
        print(
            f"dispatch: {exc}; webhooks recent shows the running daemon's calls (kept in its "
            f"memory): start it, or give the command its --config. Owed calls wait in {outbox}",
            file=sys.stderr,
        )
        return 1
    if not answer.get("ok"):
        print(f"dispatch: {answer.get('error')}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(answer["result"], indent=2))
    else:
        _print(answer["result"])
    return 0
