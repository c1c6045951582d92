"""Postfix's ``smtp-source`` as the independent load generator, timed from outside.

smtp-source reports nothing about time itself, so a run is timed around the process. With
``-c`` it prints a counter after each message; when a run hits its time limit the process is
stopped and the last counter says how many messages were done, so a slow peer costs bounded
time instead of stalling the whole benchmark.
"""

from __future__ import annotations

import os
import re
import resource
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procs import LOOPBACK

MAIL_FROM = "a@example.test"
RCPT_TO = "b@example.test"
MESSAGE_BYTES = 5120
SESSIONS = 20
RESET_RETRIES = 20
"""``-C 20``: retry a connection the server resets up to 20 times (a full listen queue)."""

_COUNTER = re.compile(rb"(\d+)\r")


@dataclass
class SourceRun:
    """One smtp-source run: messages completed, wall time, generator CPU, and any failure."""

    messages: int
    seconds: float
    cpu_seconds: float
    error: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def command(
    port: int,
    messages: int,
    *,
    reuse: bool,
    sessions: int = SESSIONS,
    message_bytes: int = MESSAGE_BYTES,
    recipients: int = 1,
) -> list[str]:
    """smtp-source's arguments; ``recipients`` > 1 sends that many RCPTs per message
    (smtp-source numbers them: ``1b@example.test``, ``2b@…``)."""
    argv = [
        "smtp-source",
        "-c",
        "-C",
        str(RESET_RETRIES),
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(message_bytes),
        "-f",
        MAIL_FROM,
        "-t",
        RCPT_TO,
    ]
    if recipients > 1:
        argv += ["-r", str(recipients)]
    if reuse:
        argv.append("-d")  # keep each connection for the next message
    return [*argv, f"{LOOPBACK}:{port}"]


def run_source(
    port: int,
    messages: int,
    *,
    reuse: bool,
    timeout: float,
    log_path: Path,
    message_bytes: int = MESSAGE_BYTES,
    recipients: int = 1,
) -> SourceRun:
    """Send ``messages`` with 20 concurrent sessions; stop at ``timeout`` seconds."""
    argv = command(port, messages, reuse=reuse, message_bytes=message_bytes, recipients=recipients)
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    error = ""
    with log_path.open("wb") as out:
        began = time.monotonic()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            ended = _ended_within(process.pid, timeout)
            seconds = time.monotonic() - began
            if not ended:
                os.killpg(process.pid, signal.SIGTERM)
                error = f"stopped at the {timeout:.0f} s limit"
            code = process.wait()
            if not ended:
                code = 0  # stopped here: its last counter says how far it got
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = log_path.read_bytes()
    counters = _COUNTER.findall(output)
    done = int(counters[-1]) if counters else 0
    if code != 0:
        tail = output.decode(errors="replace").replace("\r", "\n").strip().splitlines()
        error = f"exit {code}: {tail[-1] if tail else ''}"
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    return SourceRun(messages=done, seconds=seconds, cpu_seconds=cpu, error=error)


def _ended_within(pid: int, timeout: float) -> bool:
    """Whether the child ``pid`` (not reaped yet) ends within ``timeout`` seconds; returns the
    moment it does (its pidfd turns readable, pidfd_open(2)). ``Popen.wait(timeout)`` polls
    instead, sleeping up to 50 ms between looks: a quick run of 1,000 messages lasts 0.5-0.9
    s, so its rates came in steps of 6-9 % (docs/intake-cpu.md, round 10)."""
    fd = os.pidfd_open(pid)
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
