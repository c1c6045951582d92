"""The command line's side of the control socket (blocking: the CLI has no event loop)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from dispatch.control.commands import SEND_TEST_WAIT_SECONDS
from dispatch.control.server import SOCKET_NAME

TIMEOUT_SECONDS = SEND_TEST_WAIT_SECONDS + 30.0
"""How long to wait for an answer: send-test waits up to its relay's answer before replying."""


class DaemonUnreachable(Exception):
    """No daemon answers on the control socket."""


def daemon_answers(data_dir: Path) -> bool:
    """Whether a daemon accepts connections on ``data_dir``'s control socket (sends nothing)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT_SECONDS)
            sock.connect(str(data_dir / SOCKET_NAME))
    except OSError:
        return False
    return True


def request(data_dir: Path, command: str, args: dict[str, Any]) -> dict[str, Any]:
    """Send one command to the running daemon; return its answer."""
    path = data_dir / SOCKET_NAME
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT_SECONDS)
            sock.connect(str(path))
            sock.sendall(json.dumps({"command": command, "args": args}).encode() + b"\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError, TimeoutError) as exc:
        raise DaemonUnreachable(f"no daemon answers on {path}") from exc
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise DaemonUnreachable(f"the daemon on {path} sent no answer that makes sense")
    return answer
