"""``python -m bench.e2e_probe``: end-to-end rate and CPU ms per message of one Dispatch tree.

A quick A/B tool for changes to delivery, beside ``nox -s bench`` (which compares servers):
it starts ``smtp-sink``, then Dispatch from the source tree given (``--tree``, put first on
``PYTHONPATH``; default: this checkout) with its defaults — ``listener.processes`` is written
only when ``--processes`` is given —, sends M messages with ``smtp-source`` (20 sessions,
connections reused, 5 KiB) and times until the sink has counted all M. CPU is the sum of
utime + stime over every process of Dispatch's session (main, intake workers, their threads)
read from ``/proc`` before and after the M messages, so the CPU ms per delivered message
does not depend much on what else the machine runs. ``--trees A B`` alternates the trees
round by round, so a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.load import run_source
from bench.peers.base import SERVER_NAME
from bench.peers.sink import start_sink
from bench.procs import LOOPBACK, Launcher, free_port
from bench.procstat import session_cpu_seconds

REPO = Path(__file__).resolve().parent.parent


def _config(directory: Path, relay_port: int, processes: int | None, spool: str) -> Path:
    ports = {name: free_port() for name in ("smtp", "webui", "api")}
    extra = f"processes = {processes}\n" if processes is not None else ""
    text = f"""\
data_dir = "{directory / "data"}"
default_relay = "out"

[listener]
ports = [{ports["smtp"]}]
bind_address = "{LOOPBACK}"
server_name = "{SERVER_NAME}"
max_connections = 200
{extra}
[spool]
directory = "{directory / "spool"}"
{spool}
[database]
url = "sqlite:///{directory / "data" / "dispatch.db"}"

[webui]
port = {ports["webui"]}
bind_address = "{LOOPBACK}"

[api]
port = {ports["api"]}
bind_address = "{LOOPBACK}"

[[relays]]
name = "out"
kind = "smtp"
host = "{LOOPBACK}"
port = {relay_port}
tls = "none"
"""
    path = directory / "dispatch.toml"
    path.write_text(text)
    (directory / "port").write_text(str(ports["smtp"]))
    return path


_PLANT = """
import sys, time
from pathlib import Path
from dispatch.spool import Envelope, new_id
incoming = Path(sys.argv[1]) / "incoming"
incoming.mkdir(parents=True, exist_ok=True)
body = b"From: a@example.test\\r\\nSubject: drain\\r\\n\\r\\n" + b"x" * 5000 + b"\\r\\n"
for _ in range(int(sys.argv[2])):
    i = new_id()
    (incoming / f"{i}.eml").write_bytes(body)
    e = Envelope(id=i, mail_from="a@example.test", recipients=("b@example.test",), source="smtp",
                 peer_ip="127.0.0.1", auth_identity=None, tags=(), received_at=time.time(),
                 size=len(body), attempts=0, next_attempt_at=0.0)
    (incoming / f"{i}.json").write_bytes(e.to_json())
"""


def drain_run(
    tree: Path, processes: int | None, messages: int, work: Path, spool: str = ""
) -> tuple[float, float]:
    """Delivery alone: ``messages`` already in the spool at start; time until the sink has all."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run(
        [sys.executable, "-c", _PLANT, str(work / "spool"), str(messages)], env=env, check=True
    )
    with Launcher(work) as launcher:
        sink = start_sink(launcher, "smtp-sink")
        config = _config(work, sink.port, processes, spool)
        child = launcher.start(
            "dispatch",
            [sys.executable, "-m", "dispatch", "--config", str(config)],
            cwd=work,
            env=env,
        )
        began = time.monotonic()
        arrived = sink.wait_for(messages, 180)
        end = arrived if arrived is not None else time.monotonic()
        cpu = session_cpu_seconds(child.pid)  # start-up included: the same for every tree
        delivered = sink.delivered()
        if delivered < messages:
            print(f"  warning: {delivered} of {messages} delivered")
        return delivered / (end - began), cpu * 1000 / max(1, delivered)


def one_run(
    tree: Path, processes: int | None, messages: int, work: Path, spool: str = ""
) -> tuple[float, float]:
    """Start sink and Dispatch from ``tree``, send ``messages``; return (msgs/s, CPU ms/msg)."""
    with Launcher(work) as launcher:
        sink = start_sink(launcher, "smtp-sink")
        config = _config(work, sink.port, processes, spool)
        env = dict(os.environ, PYTHONPATH=str(tree))
        child = launcher.start(
            "dispatch",
            [sys.executable, "-m", "dispatch", "--config", str(config)],
            cwd=work,
            env=env,
        )
        child.wait_for_log("all components ready", 60)
        time.sleep(1.0)  # the workers' start-up CPU is not the messages'
        port = int((work / "port").read_text())
        cpu0 = session_cpu_seconds(child.pid)
        began = time.monotonic()
        run = run_source(port, messages, reuse=True, timeout=120, log_path=work / "source.out")
        arrived = sink.wait_for(run.messages, 120)
        end = arrived if arrived is not None else time.monotonic()
        cpu1 = session_cpu_seconds(child.pid)
        delivered = sink.delivered()
        if run.error or delivered < messages:
            print(f"  warning: {run.messages} accepted, {delivered} delivered {run.error}")
        return delivered / (end - began), (cpu1 - cpu0) * 1000 / max(1, delivered)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e_probe")
    parser.add_argument(
        "--trees",
        nargs="+",
        default=[str(REPO)],
        help="source trees; TREE:W:P runs TREE with spool.worker_count = W, processes = P",
    )
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--spool", default="", help="extra lines for [spool], e.g. worker_count = 8"
    )
    parser.add_argument(
        "--drain", action="store_true", help="delivery alone: M messages in the spool at start"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the last run's files here")
    args = parser.parse_args()
    figures: dict[str, list[tuple[float, float]]] = {tree: [] for tree in args.trees}
    for number in range(args.rounds):
        for spec in args.trees if number % 2 == 0 else list(reversed(args.trees)):
            tree, _, rest = spec.partition(":")
            workers, _, count = rest.partition(":")
            spool = args.spool + (f"worker_count = {workers}\n" if workers else "")
            processes = int(count) if count else args.processes
            run = drain_run if args.drain else one_run
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                rate, cpu = run(Path(tree), processes, args.messages, args.keep, spool)
            else:
                with tempfile.TemporaryDirectory(prefix="e2e-probe-") as scratch:
                    rate, cpu = run(Path(tree), processes, args.messages, Path(scratch), spool)
            figures[spec].append((rate, cpu))
            print(f"round {number + 1} {spec}: {rate:.0f} msgs/s, {cpu:.2f} CPU ms/msg", flush=True)
    for tree, values in figures.items():
        rates, cpus = [v[0] for v in values], [v[1] for v in values]
        print(
            f"{tree}: median {statistics.median(rates):.0f} msgs/s "
            f"({min(rates):.0f}-{max(rates):.0f}), {statistics.median(cpus):.2f} CPU ms/msg "
            f"({min(cpus):.2f}-{max(cpus):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
