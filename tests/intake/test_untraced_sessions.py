"""Sessions of an intake worker keep no traces (``monitoring/untraced.py``).

A worker serves no monitoring page, so its sessions get an :class:`UntracedTracer`: the
listener below runs with one, as a worker does, over real SMTP on 127.0.0.1. Mail is queued
as ever, error replies still count toward closing a session, and nothing is traced.
"""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from dispatch.config.settings import ListenerSettings
from dispatch.intake import worker
from dispatch.intake.link import Start
from dispatch.intake.session import MAX_ERROR_REPLIES
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Tracer
from dispatch.monitoring.untraced import UntracedTrace, UntracedTracer
from dispatch.security.certs import CertificateFiles
from dispatch.spool import MessageState
from tests.conftest import free_port
from tests.intake.conftest import in_thread, running_smtpd


def test_an_untraced_trace_keeps_nothing() -> None:
    tracer = UntracedTracer()
    trace = tracer.start("smtp.session", "127.0.0.1 → port 25")
    assert isinstance(trace, UntracedTrace)
    assert not trace.recording
    trace.event("C: MAIL FROM:<a@example.com>")
    trace.event_lines(["S: 250 2.1.0 ok"])
    trace.error("refused")
    child = trace.child("message", "spl_x")
    trace.linked(child.link, "queued")
    with pytest.raises(ValueError, match="boom"), trace:
        raise ValueError("boom")
    queued = tracer.message_queued(
        "spl_x", mail_from="a@example.com", recipients=["b@example.net"], size=10, parent=trace
    )
    assert child is trace
    assert queued is trace
    assert tracer.message_trace("spl_x") is trace
    assert trace.events() == []
    assert trace.children == []
    assert not trace.errored
    assert not trace.finished
    # A tracer's own traces record, which is what the sessions ask before formatting.
    assert Tracer().start("smtp.session", "t").recording


async def test_a_worker_style_listener_queues_mail_and_traces_nothing(
    tmp_path: Path, tls_files: tuple[trustme.CA, CertificateFiles]
) -> None:
    port = free_port()
    live: dict[str, Any] = {"connection_timeout_seconds": 10, "ports": [port]}
    tracer = UntracedTracer()
    async with running_smtpd(tmp_path / "spool", tls_files, live, {"smtp": port}, tracer) as smtpd:

        def talk() -> list[int]:
            client = smtplib.SMTP("127.0.0.1", port, timeout=10)
            client.sendmail("a@example.com", ["b@example.net"], b"Subject: x\r\n\r\nhi\r\n")
            codes = [client.docmd("NOSUCH")[0] for _ in range(MAX_ERROR_REPLIES)]
            codes.append(client.getreply()[0])  # what follows the last error, unasked
            client.close()
            return codes

        # Refused, and counted: the last error reply closes the session.
        assert await in_thread(talk) == [500] * MAX_ERROR_REPLIES + [421]
        assert len(list((tmp_path / "spool" / MessageState.INCOMING.value).glob("*.eml"))) == 1
        assert len(smtpd.events) == 1  # the message log still hears of it
    assert tracer._untraced.events() == []


def test_a_worker_gives_its_sessions_an_untraced_tracer(tmp_path: Path) -> None:
    start = Start(
        ListenerSettings(), str(tmp_path / "spool"), CertificateFiles(tmp_path, tmp_path, True)
    )
    outbox, _ = trio.open_memory_channel[worker.Queued](1)
    context = worker._context(
        start, lambda: start.listener, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), Stats(), outbox
    )
    assert isinstance(context.tracer, UntracedTracer)
