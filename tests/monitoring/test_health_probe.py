"""The /health database probe sees what a fresh open by the daemon's user would see.

Regression (issue 11, item 7): with the database file at mode 000 the probe still reported it
fine. Two users are covered: root (whom the kernel lets open anything, so the probe judges the
mode bits) and an unprivileged user (the kernel's own answer), the latter in a child process
that drops to ``nobody`` before probing.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatch.monitoring.health import probe_sqlite

NOBODY = 65534


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory ``nobody`` can reach (pytest's tmp_path sits under a root-only 0700 one)."""
    directory = Path(tempfile.mkdtemp(prefix="dispatch-probe-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()


def make_database(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()


def test_as_root_the_mode_bits_decide(shared_dir: Path) -> None:
    assert os.geteuid() == 0, "this case is about root; CI runs as root"
    database = shared_dir / "dispatch.db"
    make_database(database)
    url = f"sqlite:///{database}"
    database.chmod(0o600)
    probe_sqlite(url)
    database.chmod(0)
    with pytest.raises(PermissionError, match=r"mode 000\) denies read and write"):
        probe_sqlite(url)
    database.chmod(0o400)
    with pytest.raises(PermissionError, match=r"mode 400\) denies write"):
        probe_sqlite(url)
    database.chmod(0o606)
    os.chown(database, NOBODY, NOBODY)  # someone else's file: the "other" bits apply
    probe_sqlite(url)
    database.chmod(0o660)
    with pytest.raises(PermissionError, match="denies read and write"):
        probe_sqlite(url)
    os.chown(database, 0, 0)
    database.chmod(0o600)
    shared_dir.chmod(0o555)  # no new -journal/-wal could be created beside it
    try:
        with pytest.raises(PermissionError, match="denies write"):
            probe_sqlite(url)
    finally:
        shared_dir.chmod(0o755)


PROBE_AS_NOBODY = f"""
import os, sys
from dispatch.monitoring.health import probe_sqlite
os.setgroups([])
os.setresgid({NOBODY}, {NOBODY}, {NOBODY})
os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
try:
    probe_sqlite(sys.argv[1])
except OSError as exc:
    print("error:", exc)
else:
    print("ok")
"""


def probe_as_nobody(url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE_AS_NOBODY, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_as_an_unprivileged_user_the_kernel_decides(shared_dir: Path) -> None:
    database = shared_dir / "dispatch.db"
    make_database(database)
    os.chown(database, NOBODY, NOBODY)
    os.chown(shared_dir, NOBODY, NOBODY)
    url = f"sqlite:///{database}"
    readable = probe_as_nobody(url)
    database.chmod(0)
    locked_out = probe_as_nobody(url)
    database.chmod(0o600)
    again = probe_as_nobody(url)
    assert readable == "ok"
    assert locked_out.startswith("error: cannot reopen the database")
    assert "mode 000" in locked_out
    assert again == "ok"
