"""Child processes the benchmark starts, and the guarantee that it stops every one of them.

Theory of operation: every server (Dispatch, a peer, a sink, a helper) is started through one
:class:`Launcher` in a session of its own (``start_new_session``), with its output going to a
log file in the run's directory — never to a pipe, so a chatty server can never block on a
reader that fell behind. Leaving the launcher's ``with`` block — normally, on an exception or
on Ctrl-C / SIGTERM (turned into :class:`KeyboardInterrupt` by :func:`interrupt_on_sigterm`) —
stops what is still running, newest first: the child's own stop command if it has one (Postfix
detaches its master), then SIGTERM to its process group, then SIGKILL after a grace period.
Only the process groups of children started here are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"

STOP_GRACE_SECONDS = 10.0
"""SIGTERM first, SIGKILL after this: Dispatch drains its sessions in well under it."""


class StartError(Exception):
    """A child did not come up; the message says which and shows the end of its log."""


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def listen_backlog(port: int) -> int | None:
    """The accept-queue length the server listening on ``port`` asked for (``ss`` Send-Q)."""
    done = run_quiet(["ss", "-ltnH", f"sport = :{port}"], timeout=10)
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2].isdigit():
            return int(fields[2])
    return None


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ("" if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Child:
    """One started process (and its process group); owns its log file handle."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stop_command: Callable[[], None] | None = None,
        after_stop: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._stop_command = stop_command
        self._after_stop = after_stop
        self.started_at = time.monotonic()
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for_log(self, text: str, timeout: float) -> float:
        """Wait for a log line containing ``text``; return when it was seen (monotonic).

        Raises :class:`StartError` with the end of the log if the child exits or the time
        runs out first.
        """
        deadline = time.monotonic() + timeout
        offset = 0
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), self.log_path.open("rb") as log:
                log.seek(offset)
                chunk = log.read()
                if text.encode() in chunk:
                    return time.monotonic()
                offset = max(0, offset + chunk.rfind(b"\n") + 1)
            if not self.running():
                break
            time.sleep(0.01)
        raise StartError(self._failure(f"no log line with {text!r}"))

    def wait_for_port(self, port: int, timeout: float) -> None:
        """Wait until ``port`` accepts connections (or fail with the end of the log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_open(port):
                return
            if not self.running():
                break
            time.sleep(0.05)
        raise StartError(self._failure(f"port {port} did not open"))

    def _failure(self, what: str) -> str:
        state = "still running" if self.running() else f"exited with {self.process.returncode}"
        return f"{self.name}: {what} ({state}); log {self.log_path}:\n{log_tail(self.log_path)}"

    def terminate(self) -> None:
        """Ask the child to stop: its stop command if it has one, then SIGTERM to its group."""
        if self._stop_command is not None:
            with contextlib.suppress(Exception):
                self._stop_command()
        if self.running():
            self._signal_group(signal.SIGTERM)

    def finish(self, deadline: float) -> None:
        """Wait for the child until ``deadline`` (monotonic), then SIGKILL its group."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        # Helpers the child forked into its group may outlive it (OpenSMTPD's processes).
        self._signal_group(signal.SIGKILL)
        self.process.wait()
        if self._after_stop is not None:
            after, self._after_stop = self._after_stop, None
            after()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop the child and its process group: stop command, SIGTERM, then SIGKILL."""
        self.terminate()
        self.finish(time.monotonic() + grace)

    def _signal_group(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)


class Launcher:
    """Starts children and stops all that still run when its ``with`` block ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[Child] = []
        self._cleanups: list[Callable[[], None]] = []
        self._names: dict[str, int] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stop_command: Callable[[], None] | None = None,
        after_stop: Callable[[], None] | None = None,
    ) -> Child:
        # One log file per start: a second start must not find the first one's lines.
        self._names[name] = self._names.get(name, 0) + 1
        suffix = "" if self._names[name] == 1 else f"-{self._names[name]}"
        log_path = self.log_dir / f"{name}{suffix}.log"
        child = Child(
            name,
            argv,
            log_path,
            cwd=cwd,
            env=env,
            stop_command=stop_command,
            after_stop=after_stop,
        )
        self._children.append(child)
        return child

    def stop(self, *children: Child) -> None:
        """Stop these children now, all at once (they are forgotten by the launcher)."""
        for child in children:
            child.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in children:
            child.finish(deadline)
            with contextlib.suppress(ValueError):
                self._children.remove(child)

    def on_exit(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` when the launcher closes (after the children are stopped)."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        children, self._children = self._children[::-1], []
        for child in children:
            with contextlib.suppress(Exception):
                child.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in children:
            with contextlib.suppress(Exception):
                child.finish(deadline)
        while self._cleanups:
            with contextlib.suppress(Exception):
                self._cleanups.pop()()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A second Ctrl-C while stopping must not leave children behind: finish first.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.close()
        finally:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`KeyboardInterrupt` so ``finally`` blocks stop the children."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_quiet(argv: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion, capturing its output.

    Never raises for the command's failure: a missing program gives exit status 127, as a
    shell would.
    """
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))
