"""Spool retry, flush and delete over the real control socket write audit entries.

The server's audit callable collects them here (the daemon hands it ``MessageLog.audit``;
tests/system/test_audit_log.py checks the rows). The actor is the client as the kernel names
it (SO_PEERCRED): this test process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dispatch.spool import MessageState
from dispatch.spool.testing import write_pair
from tests.control.test_control_socket import ask, control_server


def request(command: str, **args: object) -> bytes:
    return json.dumps({"command": command, "args": args}).encode() + b"\n"


async def test_retry_and_delete_are_audited_with_the_client_reads_and_refusals_not(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    retried = write_pair(spool, MessageState.FAILED, last_error="550 no such user")
    deleted = write_pair(spool, MessageState.FAILED)
    async with control_server(tmp_path) as served:
        for command, message_id in (("spool.retry", retried.id), ("spool.delete", deleted.id)):
            answer = await ask(served.path, request(command, id=message_id))
            assert answer["ok"] is True, answer
        refused = await ask(served.path, request("spool.delete", id=deleted.id))  # gone now
        assert refused["ok"] is False
        shown = await ask(served.path, request("spool.show", id=retried.id))
        assert shown["ok"] is True
        listed = await ask(served.path, request("spool.list"))
        assert listed["ok"] is True
    client = f"uid {os.getuid()} (pid {os.getpid()})"
    assert [(e.category, e.level, e.actor, e.message) for e in served.audited] == [
        (
            "System",
            "Notice",
            client,
            f"spool retry {retried.id}: moved from failed back to incoming, due now",
        ),
        ("System", "Notice", client, f"spool delete {deleted.id}: deleted from failed"),
    ]
