"""``python -m bench.intake_cpu``: CPU per accepted message of one intake process, tree by tree.

The intake figures of ``nox -s bench`` and ``bench.health_ab`` measure the whole daemon on a
machine whose paired rounds differ by 10 to 15 %. This probe runs what an intake worker process
runs and nothing else: an :class:`~dispatch.intake.listener.SmtpListener` whose sessions write
into a scratch spool through a :class:`~dispatch.spool.SpoolEntrance` (every commit fsynced as
in the daemon), with the committed envelope and each message-log event encoded as the worker
encodes them for its link to the main process. ``smtp-source`` sends ``--messages`` 5 KiB
messages over 20 sessions (connections reused, or ``--new`` connection per message) after a
warm-up; the process runs on one core (an intake worker does with the default
``listener.pin_processes``), and reports its CPU time per message (every thread, user and
system apart) from the first message after the warm-up to the last. Each run is a fresh
process of one source tree (``--trees``, first on ``PYTHONPATH``); the trees alternate run by
run (``bench/alternate.py``); the result is the median per tree and its range.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.alternate import MEASURE, CpuTime, cpu_rounds
from bench.load import run_source
from bench.procs import free_port

REPO = Path(__file__).resolve().parent.parent
WARM_UP = 200

# Runs in the child, with the tree under test first on sys.path.
_RUN = """
import os
import sys
from pathlib import Path
import attrs
import trio
from dispatch.config.settings import ListenerSettings
from dispatch.config.types import BindAddresses, Port, PositiveInt
from dispatch.intake.link import Committed, Logged, encode
from dispatch.intake.listener import SmtpListener
from dispatch.intake.ports import ListeningPorts
from dispatch.intake.session import IntakeContext
from dispatch.lifecycle import Shutdown
from dispatch.logs import bind, configure_logging
from dispatch.monitoring.stats import Stats
try:  # as an intake worker: its sessions keep no traces
    from dispatch.monitoring.untraced import UntracedTracer as Tracer
except ImportError:  # a tree from before monitoring/untraced.py
    from dispatch.monitoring.traces import Tracer
from dispatch.security.throttle import FailureThrottle
from dispatch.spool import SpoolEntrance
from dispatch.spool.spool import DEFAULT_MAX_THREADS

port, spool, messages, warm_up = int(sys.argv[1]), Path(sys.argv[2]), *map(int, sys.argv[3:5])
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # on one core, as a worker runs
# A worker logs (a `queued` line per message) to its stderr, line-buffered: here to a file.
configure_logging(stream=open(spool.parent / f"intake-{port}.log", "w", buffering=1))
settings = attrs.evolve(ListenerSettings(), ports=(Port(port),),
    bind_address=BindAddresses(("127.0.0.1",)), server_name="bench.example.test",
    max_connections=PositiveInt(200), processes=1)
committed, began, done = [0], [(0.0, 0.0)], trio.Event()

try:  # a tree whose workers send a message's received event inside its Committed
    from dispatch.intake.worker import Received, fold
except ImportError:
    fold = None
announced = []

def on_commit(envelope, *encoded):  # and its JSON, from trees that hand it on
    if fold is None:
        encode([Committed(envelope, *encoded)])
    else:  # sent with the received event that follows at once, as a worker's outbox does
        announced.append(Committed(envelope, *encoded))
    committed[0] += 1
    if committed[0] == warm_up:
        began[0] = cpu_now()
    elif committed[0] == warm_up + messages:
        print(cpu_line(began[0], messages), flush=True)
        done.set()

async def main():
    bind(worker="2")
    context = IntakeContext(
        settings=lambda: settings,
        spool=SpoolEntrance(spool, on_commit, limiter=trio.CapacityLimiter(DEFAULT_MAX_THREADS)),
        stats=Stats(), auth_throttle=FailureThrottle(), tls=None,
        record=lambda event: encode([Logged(event)]), tracer=Tracer(),
        audit=lambda entry: encode([Logged(entry)]),
        **({} if fold is None else {"received": lambda envelope, subject: encode(
            fold([announced.pop(), Received(envelope, subject)]))}))
    listener = SmtpListener(context, ListeningPorts(configured=(), listening=()))
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", port))
    sock.listen(256)
    shutdown = Shutdown(grace_seconds=5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.serve, [trio.SocketListener(sock)], shutdown)
        print("ready", flush=True)
        await done.wait()
        shutdown.request()

trio.run(main)
"""


def one_run(tree: Path, messages: int, *, reuse: bool, scratch: Path) -> CpuTime:
    """CPU time per accepted message in one fresh process of ``tree``."""
    port = free_port()
    spool = scratch / "spool"
    for folder in ("tmp", "incoming"):
        (spool / folder).mkdir(parents=True, exist_ok=True)
    numbers = [str(port), str(spool), str(messages), str(WARM_UP)]
    with subprocess.Popen(
        # -P: "-c" would put the working directory first on sys.path, before PYTHONPATH.
        [sys.executable, "-P", "-c", MEASURE + _RUN, *numbers],
        env=dict(os.environ, PYTHONPATH=str(tree)),
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            child.kill()
            raise RuntimeError(f"the intake probe of {tree} did not start")
        sent = run_source(
            port, WARM_UP + messages, reuse=reuse, timeout=120, log_path=scratch / "source.out"
        )
        if sent.messages < WARM_UP + messages:
            child.kill()
            raise RuntimeError(f"{tree}: {sent.messages} of {WARM_UP + messages} accepted")
        line = child.stdout.readline()
        child.wait(timeout=30)
    return CpuTime.parse(line)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.intake_cpu")
    parser.add_argument("--trees", nargs="+", default=[str(REPO)], help="source trees")
    parser.add_argument("--messages", type=int, default=3000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--new", action="store_true", help="a new connection per message")
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the runs' spools go (default: the temporary directory); on ext4 without "
        "a journal give a directory that nothing else deletes files in, such as a new one "
        "at the top of the file system (docs/intake-cpu.md, round 9)",
    )
    args = parser.parse_args()

    # Every run's scratch spool is deleted only after the last run: on ext4 without a
    # journal, creating a file steps over the inodes of its block group deleted in the last
    # minutes, so a run after a deletion nearby pays for it in system time
    # (docs/intake-cpu.md, round 9).
    with tempfile.TemporaryDirectory(prefix="intake-cpu-", dir=args.scratch) as scratches:

        def run(tree: Path) -> CpuTime:
            scratch = Path(tempfile.mkdtemp(dir=scratches))
            return one_run(tree, args.messages, reuse=not args.new, scratch=scratch)

        cpu_rounds(args.trees, args.rounds, run, "message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
