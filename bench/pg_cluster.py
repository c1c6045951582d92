"""A throwaway PostgreSQL cluster for the database figure (Debian's ``postgresql`` package).

PostgreSQL refuses to run as root: the cluster lives in a directory of the run owned by the
``postgres`` user, is started with ``runuser`` on a free loopback port (never 5432) with the
server's defaults (``fsync`` on, as in production), and is stopped with ``pg_ctl -m fast``.
:func:`pg_cluster` yields a URL maker: one fresh database per name.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.procs import free_port

USER = "dispatch"


class NoPostgres(Exception):
    """PostgreSQL is not installed or would not start."""


def _as_postgres(*args: str) -> None:
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise NoPostgres(f"{Path(args[0]).name} failed: {(done.stderr or done.stdout).strip()}")


@contextmanager
def pg_cluster(directory: Path) -> Iterator[Callable[[str], str]]:
    """Start a cluster in ``directory``; yield ``url(name)`` that creates database ``name``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise NoPostgres("no /usr/lib/postgresql/*/bin/initdb: apt-get install -y postgresql")
    bin_dir = Path(found[-1]).parent
    directory.mkdir(parents=True, exist_ok=True)
    shutil.chown(directory, "postgres", "postgres")
    data, port = directory / "data", free_port()
    _as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER)
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1"
    _as_postgres(
        str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(directory / "log"),
        "-w", "start",
    )  # fmt: skip

    def url(name: str) -> str:
        import psycopg

        admin = f"postgresql://{USER}@127.0.0.1:{port}/postgres"
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{USER}@127.0.0.1:{port}/{name}"

    try:
        yield url
    finally:
        _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
