"""``python -m bench.relay_cpu``: CPU per delivery of the ``smtp`` relay client, tree against tree.

The daemon-wide probes (``bench.e2e_probe``) measure a change to the relay client together with
everything else a delivery costs, and on this machine their paired rounds differ by 10 to 15 %:
a change worth a few percent of a delivery cannot show there. This probe runs only the relay
client, as the delivery workers use it: ``SmtpRelayClient.deliver`` with a 5 KiB message read
with its claim (``content``), a trace (the attempt's, as ``/debug/traces`` keeps it), 4
deliveries at a time over pooled connections to ``smtp-sink``. Each run is a fresh process of
one source tree (``--trees``, put first on ``PYTHONPATH``) that makes ``--messages``
deliveries after a warm-up and prints its CPU time per delivery (user and system). The
trees alternate run by run (``bench/alternate.py``), so a machine that slows down slows both
alike; the result is the median per tree and its range.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.alternate import MEASURE, CpuTime, cpu_rounds
from bench.peers.sink import start_sink
from bench.procs import LOOPBACK, Launcher

REPO = Path(__file__).resolve().parent.parent
WARM_UP = 50
CONCURRENCY = 4

# Runs in the child, with the tree under test first on sys.path.
_RUN = """
import sys
from pathlib import Path
import trio
from dispatch.config.settings import SmtpRelay
from dispatch.config.types import Port, PositiveFloat
from dispatch.monitoring.traces import Tracer
from dispatch.relays.base import DeliveryRequest
from dispatch.relays.smarthost import SmtpRelayClient

host, port, messages, concurrency, warm_up = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
path = Path(sys.argv[6])
body = path.read_bytes()

async def main():
    relay = SmtpRelayClient(SmtpRelay(name="out", host=host, port=Port(port), tls="none",
                                      timeout_seconds=PositiveFloat(10.0)), "bench.example.test")
    tracer = Tracer()
    async def deliver(number):
        message_id = f"m{number}"
        trace = tracer.message_trace(message_id, message_id).child("delivery.attempt", message_id)
        result = await relay.deliver(DeliveryRequest(
            message_id=message_id, mail_from="a@example.test", recipients=("b@example.test",),
            message_path=path, size=len(body), content=body, trace=trace))
        trace.finish()
        if result.outcomes[0].outcome != "delivered":
            raise SystemExit(f"not delivered: {result}")
    async def lane(count):
        for number in range(count):
            await deliver(number)
    for number in range(warm_up):
        await deliver(number)
    began = cpu_now()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(lane, messages // concurrency)
    print(cpu_line(began, messages // concurrency * concurrency))
    await relay.aclose()

trio.run(main)
"""


def one_run(tree: Path, port: int, messages: int, message: Path) -> CpuTime:
    """CPU time per delivery in one fresh process of ``tree``."""
    numbers = [str(port), str(messages), str(CONCURRENCY), str(WARM_UP)]
    out = subprocess.run(
        # -P: "-c" would put the working directory first on sys.path, before PYTHONPATH.
        [sys.executable, "-P", "-c", MEASURE + _RUN, LOOPBACK, *numbers, str(message)],
        env=dict(os.environ, PYTHONPATH=str(tree)),
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return CpuTime.parse(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_cpu")
    parser.add_argument("--trees", nargs="+", default=[str(REPO)], help="source trees")
    parser.add_argument("--messages", type=int, default=2000, help="deliveries per run")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-cpu-") as scratch:
        message = Path(scratch) / "message.eml"
        line = b"x" * 76 + b"\r\n"
        message.write_bytes(b"From: a@example.test\r\nSubject: relay cpu\r\n\r\n" + line * 64)
        with Launcher(Path(scratch)) as launcher:
            sink = start_sink(launcher)
            cpu_rounds(
                args.trees,
                args.rounds,
                lambda tree: one_run(tree, sink.port, args.messages, message),
                "delivery",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
