"""The operator's command line against a stopped and a running daemon, and a crash mid-delivery."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatch.spool import CorruptEnvelopeError
from dispatch.spool.testing import envelope_ids, read_envelope
from tests.conftest import Daemon, free_port
from tests.support.config import base_config, smtp_relay, write_config
from tests.support.sink import StartSink
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]
MESSAGE = b"Subject: cli\r\n\r\nhello\r\n"


def operator_config(
    tmp_path: Path,
    relay_port: int,
    *,
    delays: tuple[float, ...] = (0.2,),
    relays: tuple[dict[str, Any], ...] = (),
    routes: tuple[dict[str, Any], ...] = (),
    **spool: object,
) -> Path:
    """Write ``dispatch.toml``: mail goes to "upstream" (127.0.0.1:``relay_port``) unless its
    domain is ``*.internal`` (the "inbox" local relay), then to ``relays`` by ``routes``."""
    config = base_config(
        tmp_path,
        default_relay="upstream",
        spool={"retry_delays_seconds": list(delays), **spool},
        relays=[
            smtp_relay("upstream", relay_port, timeout_seconds=10),
            {"name": "inbox", "kind": "local"},
            *relays,
        ],
        routes=[{"recipient_domain": "*.internal", "relay": "inbox"}, *routes],
        bounces={"enabled": False},  # the senders' DSNs would be more messages to list
    )
    path = tmp_path / "dispatch.toml"
    write_config(path, config)
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatch", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def smtp_port(config: Path) -> int:
    return int(tomllib.loads(config.read_text())["listener"]["ports"][0])


def queue_id(config: Path, recipient: str = "someone@example.org") -> str:
    with smtplib.SMTP("127.0.0.1", smtp_port(config), timeout=10) as client:
        client.ehlo()
        client.mail("a@example.com")
        client.rcpt(recipient)
        code, text = client.data(MESSAGE)
        assert code == 250
        return text.split()[-1].decode()


def test_route_simulate_explains_the_match(tmp_path: Path) -> None:
    config = operator_config(tmp_path, free_port())
    shown = cli(config, "route", "simulate", "a@example.com", "b@mail.internal")
    assert shown.returncode == 0
    assert "routes[0] matched" in shown.stdout
    assert "inbox" in shown.stdout
    data = json.loads(cli(config, "route", "simulate", "a@x.test", "b@y.test", "--json").stdout)
    assert data["relays"] == ["upstream"]
    assert data["rule"] is None


def test_spool_commands_with_and_without_the_daemon(
    start_daemon: Start, tmp_path: Path, start_sink: StartSink
) -> None:
    relay_port = free_port()  # the upstream is down at first
    config = operator_config(tmp_path, relay_port, max_retries=0)
    daemon = start_daemon(config.read_text())
    daemon.wait_for("all components ready")
    message_id = queue_id(config)
    wait_until(lambda: (tmp_path / "spool" / "failed" / f"{message_id}.json").exists())

    listed = cli(config, "spool", "list")  # through the control socket
    assert listed.returncode == 0, listed.stderr
    assert "1 failed" in listed.stdout
    assert message_id in listed.stdout
    shown = json.loads(cli(config, "spool", "show", message_id, "--json").stdout)
    assert shown["state"] == "failed"
    assert "refused" in shown["last_error"]

    sink = start_sink(port=relay_port)  # the upstream comes back; the operator retries
    retried = cli(config, "spool", "retry", message_id)
    assert retried.returncode == 0, retried.stderr
    wait_until(lambda: len(sink.messages) == 1)
    missing = cli(config, "spool", "show", message_id)
    assert missing.returncode == 1
    assert f"no message {message_id} in the spool" in missing.stderr

    sink.stop()
    second = queue_id(config)
    wait_until(lambda: (tmp_path / "spool" / "failed" / f"{second}.json").exists())
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0

    # No daemon now: the CLI takes the spool lock and works on the files itself.
    assert second in cli(config, "spool", "list", "--state", "failed").stdout
    deleted = cli(config, "spool", "delete", second)
    assert deleted.returncode == 0, deleted.stderr
    assert not (tmp_path / "spool" / "failed" / f"{second}.json").exists()
    bad = cli(config, "spool", "retry", "not-an-id")
    assert bad.returncode == 1
    assert "is not a message id" in bad.stderr
    offline = cli(config, "send-test", "--relay", "upstream", "--to", "x@example.org")
    assert offline.returncode == 1
    assert "needs the running daemon" in offline.stderr


def attempts_of(spool: Path, message_id: str) -> tuple[str, int] | None:
    """(state, attempts) of a message as its envelope on disk says, or None if it is gone."""
    for state in ("incoming", "processing", "failed"):
        try:
            envelope = read_envelope(spool / state, message_id)
        except (FileNotFoundError, AssertionError, CorruptEnvelopeError):  # absent, or
            continue  # replaced right now
        return state, envelope.attempts
    return None


def test_spool_retry_all_delivers_waiting_mail_now(
    start_daemon: Start, tmp_path: Path, start_sink: StartSink
) -> None:
    # Issue 13, item 5: after an upstream is fixed, waiting mail waited for its retry delay
    # (up to 30 minutes by default); `spool retry --all` makes it due at once.
    upstream_port, backup_port = free_port(), free_port()  # both down at first
    config = operator_config(
        tmp_path,
        upstream_port,
        delays=(3600.0,),
        relays=(smtp_relay("backup", backup_port, timeout_seconds=10),),
        routes=({"recipient_domain": "backup.test", "relay": "backup"},),
        max_retries=1,
    )
    daemon = start_daemon(config.read_text())
    daemon.wait_for("all components ready")
    spool = tmp_path / "spool"
    via_upstream = [queue_id(config) for _ in range(2)]
    via_backup = queue_id(config, "someone@backup.test")
    everyone = [*via_upstream, via_backup]
    wait_until(lambda: all(attempts_of(spool, i) == ("incoming", 1) for i in everyone))

    # Flushing while the upstream is still down: the second attempt comes at once and, with
    # max_retries = 1, fails them; the message for the backup relay is not touched.
    flushed = cli(config, "spool", "retry", "--all", "--relay", "upstream", "--state", "incoming")
    assert flushed.returncode == 0, flushed.stderr
    assert (
        flushed.stdout.splitlines()[0]
        == "2 messages made due (2 waiting, 0 failed back to incoming)"
    )
    wait_until(lambda: all(attempts_of(spool, i) == ("failed", 2) for i in via_upstream))
    assert attempts_of(spool, via_backup) == ("incoming", 1)

    sink = start_sink(port=upstream_port)  # the upstream is fixed
    started = time.monotonic()
    flushed = cli(config, "spool", "retry", "--all", "--state", "failed")
    assert (
        flushed.stdout.splitlines()[0]
        == "2 messages made due (0 waiting, 2 failed back to incoming)"
    )
    wait_until(lambda: len(sink.messages) == 2)
    assert time.monotonic() - started < 20  # command and delivery; not the retry delay (1 h)
    assert {_id_of(m.content) for m in sink.messages} == set(via_upstream)
    assert attempts_of(spool, via_backup) == ("incoming", 1)

    backup = start_sink(port=backup_port)
    flushed = cli(config, "spool", "retry", "--all")
    assert (
        flushed.stdout.splitlines()[0]
        == "1 message made due (1 waiting, 0 failed back to incoming)"
    )
    wait_until(lambda: len(backup.messages) == 1)
    assert _id_of(backup.messages[0].content) == via_backup
    assert list(spool.glob("*/*.json")) == list(spool.glob("*/*.eml")) == []

    logged = daemon.wait_for("spool flush by uid")
    assert f"uid {os.getuid()} (pid " in logged
    assert "(relay upstream, state incoming): 2 messages made due" in logged
    again = json.loads(cli(config, "spool", "retry", "--all", "--json").stdout)
    assert again["made_due"] == 0

    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    offline = cli(config, "spool", "retry", "--all")
    assert offline.returncode == 1
    assert "spool retry --all needs the running daemon" in offline.stderr
    for wrong in (
        ["spool", "retry"],
        ["spool", "retry", everyone[0], "--all"],
        ["spool", "retry", everyone[0], "--relay", "upstream"],
    ):
        refused = cli(config, *wrong)
        assert refused.returncode == 2
        assert "spool retry: " in refused.stderr


def test_captured_mail_is_listed_and_shown_with_its_path(
    start_daemon: Start, tmp_path: Path
) -> None:
    # Issue 13, item 6: `--state captured` was an invalid choice and `show` said "not in the
    # spool" for mail the local relay had captured.
    config = operator_config(tmp_path, free_port())
    daemon = start_daemon(config.read_text())
    daemon.wait_for("all components ready")
    ids = [queue_id(config, "ops@mail.internal") for _ in range(2)]  # routed to the inbox
    captured = tmp_path / "spool" / "captured"
    wait_until(lambda: all((captured / f"{i}.json").exists() for i in ids))
    wait_until(lambda: not list((tmp_path / "spool" / "processing").glob("*.eml")))

    def check_list_and_show() -> None:
        listed = cli(config, "spool", "list", "--state", "captured")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0] == f"2 captured in {captured}"
        for message_id, line in zip(ids, lines[1:], strict=True):
            assert line.startswith(f"{message_id}  captured ")
            assert line.endswith(f"<a@example.com> → 1 recipient(s)  {captured / message_id}.eml")
        shown = cli(config, "spool", "show", ids[0])
        assert shown.returncode == 0, shown.stderr
        fields = dict(line.split(None, 1) for line in shown.stdout.splitlines() if " " in line)
        assert fields["state"] == "captured"
        assert fields["file"] == f"{captured / ids[0]}.eml"
        assert fields["recipient"] == "ops@mail.internal  captured"
        data = json.loads(cli(config, "spool", "show", ids[1], "--json").stdout)
        assert data["state"] == "captured"
        assert Path(data["path"]).read_bytes().endswith(MESSAGE)

    check_list_and_show()  # through the daemon's control socket
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    check_list_and_show()  # no daemon: the command line reads the folder itself
    unknown = cli(config, "spool", "show", "spl_01J00000000000000000000000")
    assert unknown.returncode == 1
    assert "no message spl_01J00000000000000000000000 in the spool" in unknown.stderr


def test_send_test_reports_the_relay_answer(
    start_daemon: Start, tmp_path: Path, start_sink: StartSink
) -> None:
    sink = start_sink()
    config = operator_config(tmp_path, sink.port)
    daemon = start_daemon(config.read_text())
    daemon.wait_for("all components ready")
    sent = cli(config, "send-test", "--relay", "upstream", "--to", "ops@example.org")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("delivered: 250")
    assert [m.rcpt_tos for m in sink.messages] == [("ops@example.org",)]
    assert b"Subject: Dispatch test message through relay upstream" in sink.messages[0].content
    # The local relay is forced too, although the routes would pick "upstream" for this address.
    captured = cli(config, "send-test", "--relay", "inbox", "--to", "ops@example.org", "--json")
    assert json.loads(captured.stdout)["outcome"] == "delivered"
    assert len(sink.messages) == 1
    sink.stop()
    failed = cli(config, "send-test", "--relay", "upstream", "--to", "ops@example.org")
    assert failed.returncode == 1
    assert failed.stdout.startswith("transient: relay upstream")
    unknown = cli(config, "send-test", "--relay", "nope", "--to", "ops@example.org")
    assert "relay 'nope' is not configured" in unknown.stderr
    assert not envelope_ids(tmp_path / "spool" / "incoming")  # tests are not retried
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_sigkill_during_delivery_loses_nothing(
    start_daemon: Start, tmp_path: Path, start_sink: StartSink
) -> None:
    slow = start_sink(data_delay=5)  # holds the DATA reply: the kill lands mid-delivery
    config = operator_config(tmp_path, slow.port)
    daemon = start_daemon(config.read_text())
    daemon.wait_for("all components ready")
    ids = [queue_id(config) for _ in range(3)]
    processing = tmp_path / "spool" / "processing"
    wait_until(lambda: any(processing.glob("*.eml")))
    daemon.process.kill()
    assert daemon.wait_exit() == -signal.SIGKILL
    slow.stop()

    fast = start_sink(port=slow.port)
    restarted = start_daemon(config.read_text())
    restarted.wait_for("all components ready")
    wait_until(lambda: len({_id_of(m.content) for m in fast.messages}) == 3)
    restarted.signal(signal.SIGTERM)
    assert restarted.wait_exit() == 0
    delivered = {_id_of(m.content) for m in [*slow.messages, *fast.messages]}
    assert delivered == set(ids)  # every message at least once (duplicates allowed)
    left = [*(tmp_path / "spool").glob("*/*.json"), *(tmp_path / "spool").glob("*/*.eml")]
    assert left == []  # nothing left claimed


def _id_of(content: bytes) -> str:
    return content.split(b" id ", 1)[1].split(b";", 1)[0].decode()
