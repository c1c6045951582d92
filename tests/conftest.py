"""Shared fixtures: free loopback ports and a real ``python -m dispatch`` subprocess."""

from __future__ import annotations

import errno
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

STARTUP_TIMEOUT = 30.0


def _port_slice() -> range:
    """The ports this test process hands out: outside the kernel's ephemeral range, so that no
    client connection's local port can take one between the pick and the daemon's bind, and
    split between pytest-xdist workers, so that two workers never pick the same one."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    start, stop = (10000, low) if low - 10000 >= 4000 else (high + 1, 65536)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = (stop - start) // workers
    return range(start + worker * size, start + (worker + 1) * size)


_PORTS = _port_slice()
_next_port = iter(range(0))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, from this worker's slice (``_port_slice``)."""
    global _next_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(2 * len(_PORTS)):
        port = next(_next_port, None)
        if port is None:
            _next_port = iter(_PORTS)
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {_PORTS} on {host}")


class Daemon:
    """A ``python -m dispatch`` child process whose log lines are collected as they come."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        env: dict[str, str],
        *,
        command: Sequence[str] = (sys.executable, "-m", "dispatch"),
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(
            [*command, *args],
            cwd=cwd,
            env=env,
            pass_fds=tuple(pass_fds),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def kill(self) -> None:
        """SIGKILL (if still running) and reap, closing the log pipe."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(timeout=10)

    def wait_for(self, text: str, timeout: float = STARTUP_TIMEOUT) -> str:
        """Wait for a log line containing ``text``; fail with the log so far if none comes."""
        for seen in self.lines:
            if text in seen:
                return seen
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._new.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no log line with {text!r}; log so far:\n" + "\n".join(self.lines))

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 20.0) -> int:
        code = self.process.wait(timeout=timeout)
        while (line := self._new.get(timeout=5)) is not None:
            self.lines.append(line)
        return code

    @property
    def log(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start Dispatch in ``tmp_path`` with a config file written from the given TOML text.

    Keywords: ``env`` adds environment variables; ``command`` replaces
    ``python -m dispatch`` (e.g. by an exec wrapper); ``pass_fds`` are inherited."""
    started: list[Daemon] = []

    def start(
        config: str | None = None,
        *extra: str,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Daemon:
        args = list(extra)
        if config is not None:
            path = tmp_path / "dispatch.toml"
            path.write_text(config)
            args = ["--config", str(path), *args]
        environment = {k: v for k, v in os.environ.items() if k != "DISPATCH_CONFIG"}
        environment.update(env or {})
        daemon = Daemon(
            args,
            tmp_path,
            environment,
            command=command or (sys.executable, "-m", "dispatch"),
            pass_fds=pass_fds,
        )
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


PAGE = 4096  # tmpfs allocates whole pages
FS_SIZE = 256 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(
            f"could not mount a {FS_SIZE // 1024} KiB tmpfs at {mountpoint}: "
            f"{mounted.stderr.strip() or mounted.returncode}. The disk-full tests need root "
            "(CI runs as root); run them as root rather than skipping them."
        )
    try:
        yield mountpoint
    finally:
        # A lazy unmount still detaches it if a failing test left a file open.
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


def fill(path: Path, *, leave_pages: int) -> None:
    """Fill the file system holding ``path`` with one file, then free ``leave_pages`` pages."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with pytest.raises(OSError, match="No space left") as full:  # noqa: PT012
            while True:
                os.write(fd, b"\0" * PAGE)
        assert full.value.errno == errno.ENOSPC
        size = os.lseek(fd, 0, os.SEEK_CUR)
        os.ftruncate(fd, size - size % PAGE - leave_pages * PAGE)
    finally:
        os.close(fd)
