"""Scenario 2, the full disk: the spool's file system fills up while mail keeps coming.

The spool lives on a 256 KiB tmpfs and the upstream is down, so accepted mail piles up until
the disk is full. SMTP and API senders keep pushing 5 KiB messages throughout. What must hold:

- intake refuses what it cannot write — ``452``/``451`` on SMTP, ``507`` on the API — and
  never acknowledges a message that is not whole on disk;
- ``/health`` goes ``critical`` (503) while the spool cannot be written;
- nothing half-written stays in ``tmp/`` or ``incoming/``;
- when the upstream returns, delivery frees the space and intake resumes by itself (no
  restart), ``/health`` recovers, and every acknowledged message reaches the upstream.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon, fill, free_port
from tests.support.config import Ports, base_config, smtp_relay, write_config
from tests.support.sink import Sink
from tests.support.waiting import wait_until
from tests.system.faults import (
    UNLIMITED_API,
    Ops,
    Senders,
    assert_spool_whole,
    create_api_key,
    read_spooled,
    report,
    sample,
    spool_busy,
    spool_ids,
)

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]

FULL_SECONDS = 3.0


def test_full_spool_disk_refuses_cleanly_and_recovers_by_itself(
    start_daemon: Start, tmp_path: Path, small_fs: Path
) -> None:
    ports = Ports.pick()
    upstream_port = free_port()  # nothing listens there yet: the upstream is down
    spool = small_fs / "spool"
    config = base_config(
        tmp_path,
        ports,
        spool={"directory": str(spool), "max_retries": 100_000, "retry_delays_seconds": [0.5]},
        health={"disk_warning_bytes": 128 * 1024, "disk_critical_bytes": 32 * 1024},
        default_relay="upstream",
        relays=[smtp_relay("upstream", upstream_port)],
        api=UNLIMITED_API,
    )
    text = write_config(tmp_path / "dispatch.toml", config)
    api_key = create_api_key(tmp_path / "dispatch.toml")
    daemon = start_daemon(text)
    daemon.wait_for("all components ready")
    ops = Ops(ports.webui, tmp_path / "data")
    status, body = ops.health()
    assert status == 200, body

    began = time.monotonic()
    with Senders(ports, api_key, size=5 * 1024, seed=3) as filling:
        wait_until(
            lambda: (
                filling.figures.refused["smtp 452"] >= 3 and filling.figures.refused["api 507"] >= 3
            ),
            within=60,
            what="both intakes refusing for lack of space",
        )
        # Whatever intake left free (less than one message) goes too, as when another
        # program fills the disk: now even rewriting an envelope after a failed attempt fails.
        fill(small_fs / "filler", leave_pages=0)
        time.sleep(FULL_SECONDS)  # retries come due while the disk is full
        status, body = ops.health()
    assert status == 503, body
    assert body["status"] == "critical"
    full_after = time.monotonic() - began

    # Every acknowledgement is a whole message on disk; every refusal left nothing behind.
    assert_spool_whole(spool)
    # Retries move messages between incoming/ and processing/ meanwhile: a listing of the two
    # can miss one in flight but never shows one that is not there.
    for ack in filling.acks.values():
        assert ack.token.encode() in read_spooled(spool, ack.message_id)
    on_disk = spool_ids(spool, "incoming") | spool_ids(spool, "processing")
    acked = {a.message_id for a in filling.acks.values()}
    assert on_disk <= acked, f"on disk but never acknowledged: {sample(on_disk - acked)}"

    # The upstream returns: delivery frees the disk and intake resumes without a restart.
    sink = Sink(pipelining=False, port=upstream_port)
    try:
        with Senders(ports, api_key, size=5 * 1024, seed=4, pause=0.05) as resumed:
            wait_until(
                lambda: (
                    resumed.figures.acknowledged["smtp"] >= 20
                    and resumed.figures.acknowledged["api"] >= 10
                ),
                within=60,
                what="intake to resume on its own",
            )
        wait_until(lambda: spool_busy(spool) == 0, within=60, what="the spool to drain")
        status, body = ops.health()
        assert status == 200, body
        delivered = sink.delivered()
        every = {**filling.acks, **resumed.acks}
        lost = [a.message_id for a in every.values() if a.token not in delivered]
        assert not lost, f"acknowledged, never delivered: {sample(lost)}"
    finally:
        sink.stop()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert_spool_whole(spool)
    figures = filling.figures
    report(
        "disk full",
        {
            "seconds to fill": round(full_after, 1),
            "offered while filling": dict(figures.attempts),
            "acknowledged while filling": dict(figures.acknowledged),
            "refused while filling": dict(figures.refused),
            "acknowledged after space returned": dict(resumed.figures.acknowledged),
            "delivered": len(every),
        },
    )
