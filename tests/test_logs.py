"""Peer-chosen text in log lines and traces: escaped by one helper, in both log formats.

A refused client could forge a log line by putting ``%0D%0A`` and a timestamp in the path of
a request (issue 11, item 5); the formatters now escape every message and context value.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import signal
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dispatch.logs import configure_logging, log_context, printable
from dispatch.monitoring.traces import Tracer
from tests.conftest import Daemon, free_port
from tests.support.config import Ports, base_config, write_config

RAW = frozenset("\r\n\0\x1b\x7f\x9b\u2028\u202e")
HOSTILE = "a\rb\nc\0d\x1b[31me\x7ff\x9bg\u2028h\u202ei\tj"
FORGED = "\r\n2026-12-03T17:00:00.000Z INFO  api forged line"
LINE_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR)")


def test_printable_escapes_every_dangerous_character() -> None:
    escaped = printable(HOSTILE)
    assert escaped == "a\\rb\\nc\\0d\\x1b[31me\\x7ff\\x9bg\\u2028h\\u202ei\\tj"
    assert escaped.isprintable()


def test_printable_leaves_ordinary_text_alone() -> None:
    text = "GET /api/v1/messages?x=é ü 東京 \\r"
    assert printable(text) is text


# What configure_logging turns off in every record (the logging HOWTO's "Optimization").
RECORD_FLAGS = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing", "logAsyncioTasks")


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """configure_logging changes the process's logging; put it back for the other tests."""
    previous = logging.getLogger().handlers[:], logging.getLogger().level
    flags = {name: getattr(logging, name) for name in RECORD_FLAGS}
    yield
    logging.getLogger().handlers[:], level = previous
    logging.getLogger().setLevel(level)
    for name, value in flags.items():
        setattr(logging, name, value)


@pytest.fixture
def captured(logging_restored: None) -> io.StringIO:
    return io.StringIO()


def test_text_lines_carry_the_utc_second_and_millisecond_of_their_record(
    captured: io.StringIO,
) -> None:
    configure_logging("text", "INFO", captured)
    log = logging.getLogger("dispatch.test")
    for created, msecs in (
        (1_764_000_000.999, 999),
        (1_764_000_001.001, 1),
        (1_764_000_000.5, 500),
    ):
        record = log.makeRecord("dispatch.test", logging.INFO, "", 0, "tick", (), None)
        record.created, record.msecs = created, msecs
        log.handle(record)
    assert [line[:24] for line in captured.getvalue().splitlines()] == [
        "2025-11-24T16:00:00.999Z",
        "2025-11-24T16:00:01.001Z",
        "2025-11-24T16:00:00.500Z",  # an earlier second again: not the last one's text
    ]
    # The record leaves out what no formatter shows: its caller, thread and process.
    record = log.makeRecord("dispatch.test", logging.INFO, "", 0, "tick", (), None)
    assert (record.threadName, record.processName, record.process) == (None, None, None)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_formatters_escape_messages_context_and_tracebacks(
    captured: io.StringIO, log_format: str
) -> None:
    configure_logging("json" if log_format == "json" else "text", "INFO", captured)
    log = logging.getLogger("dispatch.test")
    with log_context(peer=HOSTILE):
        log.warning("denied GET %s", "/x" + FORGED + HOSTILE)
        try:
            raise ValueError("bad" + FORGED)
        except ValueError:
            log.exception("failed")
    lines = captured.getvalue().splitlines()
    for line in lines:
        assert not RAW & set(line), line
    if log_format == "json":
        entries = [json.loads(line) for line in lines]  # every line one object
        assert len(entries) == 2
        assert "\\r\\n2026-12-03T17:00:00.000Z" in entries[0]["message"]
        assert entries[0]["peer"] == printable(HOSTILE)
    else:
        starts = [line for line in lines if LINE_START.match(line)]
        assert len(starts) == 2, lines  # the forged timestamp never starts a line
        assert "\\r\\n2026-12-03T17:00:00.000Z INFO  api forged line" in lines[0]
        assert f"peer={printable(HOSTILE)}" in lines[0]


def test_traces_escape_titles_and_events() -> None:
    tracer = Tracer()
    trace = tracer.start("api.request", "GET /x" + FORGED)
    trace.event("C: EHLO " + HOSTILE)
    trace.error("S: 500 " + HOSTILE)
    trace.finish()
    assert not RAW & set(trace.title)
    for event in trace.events():
        assert event.message.isprintable()


# --- the running daemon: every HTTP listener refuses a hostile path and logs it safely -----


def _raw_http(port: int, target: str, *, tls: bool = False) -> bytes:
    """Send one request with ``target`` exactly as given (no client-side normalising)."""
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        if tls:
            sock = stack.enter_context(context.wrap_socket(sock))
        sock.sendall(request.encode())
        answer = b""
        with contextlib.suppress(ssl.SSLEOFError):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


HOSTILE_PATH = (
    "/api/v1/%0D%0A2026-12-03T17:00:00.000Z%20INFO%20%20api%20forged%00%1B%5B31m%E2%80%A8"
)


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_refused_requests_cannot_forge_log_lines(
    start_daemon: Callable[..., Daemon], tmp_path: Path, log_format: str
) -> None:
    ports = Ports.pick()
    monitoring = free_port()
    outsider_only = ["127.0.0.2/32"]
    config = base_config(
        tmp_path,
        ports,
        api={"allowed_cidrs": outsider_only},
        webui={"allowed_cidrs": outsider_only},
        monitoring={"address": f"127.0.0.1:{monitoring}", "allowed_cidrs": outsider_only},
    )
    write_config(tmp_path / "dispatch.toml", config)
    daemon = start_daemon(
        None, "--config", str(tmp_path / "dispatch.toml"), "--log-format", log_format
    )
    daemon.wait_for("all components ready")
    for port, tls in ((ports.api, False), (ports.webui, True), (monitoring, False)):
        assert b" 403 " in _raw_http(port, HOSTILE_PATH, tls=tls).split(b"\r\n", 1)[0]
    with socket.create_connection(("127.0.0.1", ports.smtp), timeout=10) as smtp:
        smtp.sendall(
            b"EHLO a\x1b[31m\x00b\r\nMAIL FROM:<x\x1b[2J@y.test>\r\nXY\x1bZ\x9b\r\n"
            b"AUTH PLAIN AHVcdTIwMjgAcA==\r\nQUIT\r\n"
        )
        while smtp.recv(65536):
            pass
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0  # every line written, and read
    denied = [line for line in daemon.lines if "denied" in line]
    assert len(denied) >= 3, daemon.log
    for line in daemon.lines:
        assert not RAW & set(line), line
        text = json.loads(line)["message"] if log_format == "json" else line
        assert "forged" not in text or "\\r\\n2026-12-03T17:00:00.000Z" in text, line
        if log_format == "text":
            assert LINE_START.match(line) or line.startswith(" "), line


def test_json_lines_carry_the_text_as_message_and_the_spool_id_as_message_id(
    captured: io.StringIO,
) -> None:
    configure_logging("json", "INFO", captured)
    with log_context(component="delivery", message_id="spl_01ABC"):
        logging.getLogger("dispatch.delivery").info("delivered via primary")
    entry = json.loads(captured.getvalue())
    assert entry["message"] == "delivered via primary"
    assert entry["message_id"] == "spl_01ABC"
    assert entry["component"] == "delivery"
    assert "msg" not in entry


@pytest.mark.parametrize(("matches", "start"), [(True, "<4>WARNING "), (False, "20")])
@pytest.mark.usefixtures("logging_restored")
def test_text_lines_on_the_journal_start_with_their_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, matches: bool, start: str
) -> None:
    with (tmp_path / "stderr").open("w+") as stderr:
        status = Path(stderr.name).stat()
        inode = status.st_ino if matches else status.st_ino + 1  # another stream: not ours
        monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{inode}")
        monkeypatch.setattr("sys.stderr", stderr)
        configure_logging("text", "INFO")
        logging.getLogger("dispatch.smtp").warning("port 25 is taken; listening on 2525")
        stderr.seek(0)
        line = stderr.read()
    assert line.startswith(start), line
    assert line.rstrip().endswith("smtp port 25 is taken; listening on 2525"), line
