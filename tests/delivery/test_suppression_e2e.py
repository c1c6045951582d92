"""The suppression list end to end: a hard bounce puts the address on it; later mail to it is
refused at RCPT (``mode = "intake"``) or failed at delivery without a connection
(``"delivery"``); an expired or removed entry mails again; ``dispatch suppression list|remove``
as an operator runs them (real subprocesses on the daemon's database)."""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from dispatch.spool import MessageState, UnknownMessageError
from tests.delivery.harness import Running, running_dispatch
from tests.support.config import base_config, smtp_relay, write_config
from tests.support.sink import Sink, StartSink
from tests.support.waiting import wait_until_async

MESSAGE = b"From: app@sender.test\r\nSubject: hello\r\n\r\nHello.\r\n"


def config_for(root: Path, sink: Sink, **suppression: Any) -> dict[str, Any]:
    return base_config(
        root,
        relays=[smtp_relay("upstream", sink.port)],
        bounces={"enabled": False},  # the DSNs are tests/delivery/test_bounces_e2e.py's
        suppression=suppression,
    )


def rcpt_reply(dispatch: Running, recipient: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", dispatch.smtp_port, timeout=10) as client:
        client.ehlo()
        client.mail("app@sender.test")
        code, text = client.rcpt(recipient)
        return code, text.decode()


async def bounce_once(dispatch: Running, recipient: str) -> None:
    message_id = await dispatch.submit("app@sender.test", [recipient], MESSAGE)
    spool = dispatch.parts.spool

    def failed() -> bool:  # a worker's commit reaches the main process's index a bit later
        try:
            return spool.get(message_id).state is MessageState.FAILED
        except UnknownMessageError:
            return False

    await wait_until_async(failed)


async def test_intake_mode_refuses_rcpt_after_a_hard_bounce(
    tmp_path: Path, start_sink: StartSink
) -> None:
    sink = start_sink()
    async with running_dispatch(tmp_path, config_for(tmp_path, sink)) as dispatch:
        await bounce_once(dispatch, "reject-7@y.test")
        code, text = await trio.to_thread.run_sync(rcpt_reply, dispatch, "Reject-7@Y.test")
        other = await trio.to_thread.run_sync(rcpt_reply, dispatch, "fine@y.test")
        assert dispatch.parts.stats.suppressed["intake"] == 1
        assert dispatch.parts.stats.suppression_added.value == 1
    assert code == 550
    assert text.startswith("5.1.1 <Reject-7@Y.test> is on the suppression list until ")
    assert "after a hard bounce: 550 5.1.1 no such user" in text
    assert "dispatch suppression remove Reject-7@Y.test" in text
    assert other[0] == 250
    assert sink.refused["rcpt 550"] == 1


def send_to_many(dispatch: Running, recipients: list[str]) -> tuple[list[int], int]:
    """One transaction: each RCPT's reply code, then the code of the end of data."""
    with smtplib.SMTP("127.0.0.1", dispatch.smtp_port, timeout=10) as client:
        client.ehlo()
        client.mail("app@sender.test")
        codes = [client.rcpt(r)[0] for r in recipients]
        try:
            code, _ = client.data(MESSAGE)
        except smtplib.SMTPServerDisconnected:
            code = 0
        return codes, code


async def test_refused_recipients_do_not_end_the_session_of_a_message_to_many(
    tmp_path: Path, start_sink: StartSink
) -> None:
    sink = start_sink()
    async with running_dispatch(tmp_path, config_for(tmp_path, sink)) as dispatch:
        gone = [f"gone-{n}@y.test" for n in range(5)]
        for address in gone:
            await dispatch.parts.store.suppressions.add(address, "550 5.1.1 no such user", days=1)
        codes, end = await trio.to_thread.run_sync(send_to_many, dispatch, [*gone, "fine@y.test"])
        await wait_until_async(lambda: len(sink.messages) == 1)
    # Five 550s would be five error replies: the session is not closed after three of them.
    assert codes == [550, 550, 550, 550, 550, 250]
    assert end == 250
    assert sink.messages[0].rcpt_tos == ("fine@y.test",)


async def test_intake_worker_processes_refuse_too(tmp_path: Path, start_sink: StartSink) -> None:
    """With ``listener.processes = 2`` every session is a worker's, which has no database:
    the main process pushes the entries to refuse (intake/suppression.py)."""
    sink = start_sink()
    config = config_for(tmp_path, sink)
    config["listener"]["processes"] = 2
    async with running_dispatch(tmp_path, config) as dispatch:
        await bounce_once(dispatch, "reject-11@y.test")
        replies: list[int] = []

        async def refused() -> bool:
            code, _ = await trio.to_thread.run_sync(rcpt_reply, dispatch, "reject-11@y.test")
            replies.append(code)
            return code == 550

        for _ in range(60):  # pushed at the next check, every 5 s: 30 s is ample
            if await refused():
                break
            await trio.sleep(0.5)
        await wait_until_async(lambda: dispatch.parts.stats.suppressed["intake"] >= 1)
        code, _ = await trio.to_thread.run_sync(rcpt_reply, dispatch, "fine@y.test")
    assert code == 250
    assert replies[-1] == 550


async def test_delivery_mode_skips_the_address_without_a_connection_until_it_expires(
    tmp_path: Path, start_sink: StartSink
) -> None:
    sink = start_sink()
    config = config_for(tmp_path, sink, mode="delivery", days=7)
    async with running_dispatch(tmp_path, config) as dispatch:
        await bounce_once(dispatch, "reject-8@y.test")
        second = await dispatch.submit("app@sender.test", ["reject-8@y.test"], MESSAGE)
        spool = dispatch.parts.spool
        await wait_until_async(lambda: spool.get(second).state is MessageState.FAILED)
        result = spool.get(second).envelope.recipient_results["reject-8@y.test"]
        assert dispatch.parts.stats.suppressed["delivery"] == 1
        history = await dispatch.history(second)
        # An entry made 8 days ago for 7 days has expired: the address is tried again.
        suppressions = dispatch.parts.store.suppressions
        await suppressions.add("later-9@y.test", "550 gone", days=7, now=time.time() - 8 * 86400)
        third = await dispatch.submit("app@sender.test", ["later-9@y.test"], MESSAGE)
        await wait_until_async(lambda: sink.refused["rcpt 451"] >= 1)
        assert spool.get(third).state is not MessageState.FAILED
    assert sink.refused["rcpt 550"] == 1  # the second message never reached the sink
    assert result.response.startswith("suppressed: reject-8@y.test is on the suppression list")
    assert "dispatch suppression remove reject-8@y.test" in result.response
    assert [e.event for e in history] == ["received", "failed"]
    assert history[1].relay is None  # no relay was asked


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatch", "suppression", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=config.parent,
    )


async def test_the_cli_lists_and_removes_and_the_daemon_mails_again(
    tmp_path: Path, start_sink: StartSink
) -> None:
    sink = start_sink()
    config = config_for(tmp_path, sink)
    path = tmp_path / "dispatch.toml"
    write_config(path, config)
    async with running_dispatch(tmp_path, config) as dispatch:
        await bounce_once(dispatch, "reject-10@y.test")
        listed = await trio.to_thread.run_sync(cli, path, "list")
        as_json = await trio.to_thread.run_sync(cli, path, "list", "--json")
        removed = await trio.to_thread.run_sync(cli, path, "remove", "REJECT-10@y.test")
        again = await trio.to_thread.run_sync(cli, path, "remove", "reject-10@y.test")
        await trio.sleep(5.5)  # the daemon re-reads the list every 5 s
        code, _ = await trio.to_thread.run_sync(rcpt_reply, dispatch, "reject-10@y.test")
        empty = await trio.to_thread.run_sync(cli, path, "list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ADDRESS", "UNTIL", "SINCE", "MESSAGE", "REASON"]
    assert row.startswith("reject-10@y.test ")
    assert row.endswith("550 5.1.1 no such user")
    (entry,) = json.loads(as_json.stdout)["suppressions"]
    assert entry["address"] == "reject-10@y.test"
    assert entry["expires_at"] - entry["created_at"] == 30 * 86400
    assert entry["message_id"].startswith("spl_")
    assert removed.returncode == 0, removed.stderr
    assert "removed from the suppression list" in removed.stdout
    assert again.returncode == 1
    assert "is not on the suppression list" in again.stderr
    assert code == 250  # accepted again
    assert empty.stdout.strip() == "No suppressed addresses."
