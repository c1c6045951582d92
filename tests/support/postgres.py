"""A real PostgreSQL 15 for tests: one throwaway cluster per test session, a database per test.

PostgreSQL refuses to run as root, so the cluster lives in a temporary directory owned by
the ``postgres`` user (Debian's package creates it) and is started with ``runuser``; it
listens on a free loopback port (never the system's 5432) and on a socket in that
directory. :func:`postgres_cluster` (session scope) starts it once and stops it with
``pg_ctl -m fast stop`` at the end; :func:`postgres_url` gives each test a fresh database,
copied from a template (``CREATE DATABASE ... TEMPLATE``, milliseconds).

Loaded as a plugin (``-p tests.support.postgres`` in pyproject.toml), so every test
directory can ask for these fixtures. The cluster is real: tests may stop it, SIGSTOP it
(:meth:`Cluster.pause`, by the PID this fixture started) or restart it.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.conftest import free_port

USER = "dispatch"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "apt-get install -y postgresql (.ci/run does it)"
        )
    return Path(found[-1]).parent


class Cluster:
    """One running cluster: its directory, port and the controls tests use."""

    def __init__(self, directory: Path) -> None:
        self.bin = _bin_dir()
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self._names = itertools.count()

    def _as_postgres(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def init(self) -> None:
        shutil.chown(self.directory, "postgres", "postgres")
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        done = self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.directory / "log"),
            "-w",
            "start",
            check=False,
        )
        if done.returncode != 0:
            log = (self.directory / "log").read_text(errors="replace")[-2000:]
            pytest.fail(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{log}")

    def stop(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int:
        """The postmaster's PID (first line of postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def backend_pids(self) -> list[int]:
        """Every process of this cluster: the postmaster and its children."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [self.pid, *map(int, children)]

    @contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP the whole cluster (postmaster and backends), SIGCONT it on exit."""
        pids = self.backend_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(), autocommit=True, connect_timeout=10)

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        with self.admin() as connection:
            connection.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster for the whole session, stopped (fast) at its end."""
    directory = Path(tempfile.mkdtemp(prefix="dispatch-pg-"))
    cluster = Cluster(directory)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster._as_postgres(
            str(cluster.bin / "pg_ctl"), "-D", str(cluster.data), "-m", "fast", "stop", check=False
        )
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> str:
    """The URL of a fresh, empty database of the session's cluster, for this test alone."""
    return postgres_cluster.create_database()
