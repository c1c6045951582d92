"""Fuzz the control protocol: hypothesis against the parser, and against a running daemon.

The daemon test sends generated requests (raw bytes, arbitrary JSON, near-valid commands with
arbitrary arguments; newline-terminated or half-closed) to the control socket of a real
``python -m dispatch``, checks every answer is one ``{"ok": …}`` JSON line, and afterwards
runs ``dispatch spool list`` through the same socket: it must answer at once, and the log
must show no crash of the control component (issue 11, item 8).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch.control.protocol import COMMANDS, BadRequestError, Request, parse_line
from dispatch.control.server import SOCKET_NAME
from tests.conftest import Daemon
from tests.support.config import base_config, dump

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
argument_names = st.sampled_from(sorted({n for spec in COMMANDS.values() for n in spec}))
near_valid = st.fixed_dictionaries(
    {
        "command": st.sampled_from(sorted(COMMANDS)) | st.text(max_size=20) | json_values,
        "args": st.dictionaries(argument_names | st.text(max_size=8), json_values, max_size=4)
        | json_values,
    },
    optional={"extra": json_values},
)
documents = st.one_of(
    st.binary(max_size=400),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_valid.map(lambda v: json.dumps(v).encode()),
    near_valid.map(lambda v: json.dumps(v).encode()[: len(json.dumps(v)) // 2]),
)


@settings(max_examples=500, deadline=None)
@given(documents)
def test_the_parser_only_ever_raises_bad_request(line: bytes) -> None:
    try:
        request = parse_line(line.split(b"\n", 1)[0])
    except BadRequestError as exc:
        message = str(exc)
    else:
        assert isinstance(request, Request)
        assert request.command in COMMANDS
        return
    assert message


def exchange(path: Path, data: bytes, *, half_close: bool) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(str(path))
        try:
            if data:
                sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except BrokenPipeError:  # refused before all of it was read (a line too long)
            pass
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.slow
def test_fuzzed_requests_to_a_running_daemon(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = start_daemon(dump(base_config(tmp_path)))
    daemon.wait_for("all components ready")
    path = tmp_path / "data" / SOCKET_NAME
    answers: list[dict[str, Any]] = []

    # hypothesis runs inside the test: the daemon is started once, not per example.
    @settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        data=documents | st.just(b""),
        ending=st.sampled_from(["newline", "half-close", "newline-and-more"]),
    )
    def one_request(data: bytes, ending: str) -> None:
        if ending == "newline":
            data += b"\n"
        elif ending == "newline-and-more":
            data += b"\n" + data
        raw = exchange(path, data, half_close=ending == "half-close")
        assert raw.endswith(b"\n"), raw
        assert raw.count(b"\n") == 1, raw
        answer = json.loads(raw)
        assert isinstance(answer, dict)
        assert isinstance(answer["ok"], bool)
        if not answer["ok"]:
            assert isinstance(answer["error"], str)
            assert answer["error"]
        answers.append(answer)

    one_request()

    config_path = str(tmp_path / "dispatch.toml")
    listed = subprocess.run(
        [sys.executable, "-m", "dispatch", "spool", "list", "--json", "--config", config_path],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["counts"]["incoming"] == 0
    assert sum(not a["ok"] for a in answers) > len(answers) // 2  # mostly refusals, as it should
    daemon.wait_for("control spool.list from ")  # reads the log up to the CLI's request
    assert "crashed" not in daemon.log
    assert "Traceback" not in daemon.log
    assert "control bad request: " in daemon.log
