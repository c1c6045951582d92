"""How many times a commit waits for the disk, seen in the system calls it makes.

Where the spool's file system makes a rename durable with the renamed file's fsync (ext4, XFS,
btrfs: ``durability.py``) a commit is *rename into incoming/, fsync the file*; elsewhere it
stays *fsync the file, rename, fsync incoming/*. ``strace`` shows which one ran; a power cut
between the rename and the fsync leaves a torn file, which start-up sets aside.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dispatch.spool import MessageState, Spool
from dispatch.spool.durability import file_system_type, type_of_device
from dispatch.spool.layout import ENVELOPE_XATTR
from dispatch.spool.testing import write_pair

COMMIT_ONE = """
import os, sys, trio
from dispatch.spool import Spool
from dispatch.spool.testing import commit

async def main(root):
    spool = await Spool.open(root)
    try:
        os.stat(os.path.join(root, "commit-begins"))  # a marker in the trace
    except FileNotFoundError:
        pass
    print((await commit(spool, b"hello\\r\\n")).id)

trio.run(main, sys.argv[1])
"""


def commit_syscalls(root: Path) -> tuple[str, list[str]]:
    """Commit one message into a new spool at ``root`` under strace; return its id and the
    file system calls made from the marker on (pid prefixes removed)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is needed to see a commit's system calls: apt-get install strace")
    trace = root.parent / f"{root.name}.trace"
    done = subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-e",
            "trace=openat,rename,renameat,renameat2,fsync,fdatasync,newfstatat",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            COMMIT_ONE,
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    lines = [re.sub(r"^\d+\s+", "", line) for line in trace.read_text().splitlines()]
    start = next(i for i, line in enumerate(lines) if "commit-begins" in line)
    return done.stdout.strip(), lines[start + 1 :]


def fd_of(lines: list[str], path: str) -> str:
    opened = next(line for line in lines if line.startswith("openat(") and f'"{path}"' in line)
    return opened.rsplit("= ", 1)[1]


def test_on_ext4_a_commit_renames_first_and_fsyncs_only_the_file(tmp_path: Path) -> None:
    assert file_system_type(tmp_path) == "ext4", (
        "pytest puts tmp_path on the root file system, ext4 on these machines"
    )
    message_id, calls = commit_syscalls(tmp_path / "spool")
    tmp_file = f"{tmp_path}/spool/tmp/{message_id}.eml"
    final = f"{tmp_path}/spool/incoming/{message_id}.eml"
    fd = fd_of(calls, tmp_file)
    renamed = next(i for i, c in enumerate(calls) if c.startswith("rename") and final in c)
    fsyncs = [i for i, c in enumerate(calls) if c.startswith("fsync(")]
    assert fsyncs == [renamed + 1], calls
    assert calls[fsyncs[0]].startswith(f"fsync({fd})"), calls
    assert not any(f'"{tmp_path}/spool/incoming"' in c for c in calls), calls


def test_on_tmpfs_a_commit_still_fsyncs_incoming(small_fs: Path) -> None:
    assert file_system_type(small_fs) == "tmpfs"
    message_id, calls = commit_syscalls(small_fs / "spool")
    fd = fd_of(calls, f"{small_fs}/spool/tmp/{message_id}.eml")
    directory_fd = fd_of(calls, f"{small_fs}/spool/incoming")
    fsyncs = [c.split(")")[0] for c in calls if c.startswith("fsync(")]
    assert fsyncs == [f"fsync({fd}", f"fsync({directory_fd}"], calls
    renamed = next(i for i, c in enumerate(calls) if c.startswith("rename"))
    assert calls.index(next(c for c in calls if c.startswith(f"fsync({fd})"))) < renamed


async def test_the_start_up_line_says_which_commit_the_spool_makes(
    tmp_path: Path, small_fs: Path
) -> None:
    on_ext4 = await Spool.open(tmp_path / "spool")
    on_tmpfs = await Spool.open(small_fs / "spool")
    assert on_ext4.recovery_report.one_fsync_commits
    assert "(commits fsync the file only)" in on_ext4.recovery_report.summary()
    assert not on_tmpfs.recovery_report.one_fsync_commits
    assert "(commits fsync the file and incoming/)" in on_tmpfs.recovery_report.summary()


def test_the_file_system_type_is_the_one_mount_reports(tmp_path: Path, small_fs: Path) -> None:
    for directory in (tmp_path, small_fs):
        findmnt = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE", "--target", str(directory)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert file_system_type(directory) == findmnt.stdout.strip()
    assert file_system_type(tmp_path / "missing") is None


def test_mountinfo_lines_with_optional_fields_are_read() -> None:
    mountinfo = (
        "27 1 254:0 / / rw,relatime shared:1 master:2 - ext4 /dev/vda rw,discard\n"
        "30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=100k\n"
        "31 27 254:0 /srv /mnt/bind rw - ext4 /dev/vda rw\n"
        "garbage\n"
    )
    assert type_of_device(mountinfo, os.makedev(254, 0)) == "ext4"
    assert type_of_device(mountinfo, os.makedev(0, 27)) == "tmpfs"
    assert type_of_device(mountinfo, os.makedev(8, 1)) is None
    disagreeing = mountinfo + "40 1 0:27 / /x rw - xfs /dev/sdb rw\n"
    assert type_of_device(disagreeing, os.makedev(0, 27)) is None


async def test_a_commit_cut_short_by_a_power_cut_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Renamed but never fsynced: the name survived the power cut, part of the data did not.
    Never acknowledged, so never delivered; kept in orphaned/ for an operator to look at."""
    root = tmp_path / "spool"
    whole = write_pair(root, MessageState.INCOMING, b"whole\r\n", with_json=False)
    torn = write_pair(root, MessageState.INCOMING, b"torn message\r\n", with_json=False)
    empty = write_pair(root, MessageState.PROCESSING, b"claimed\r\n", with_json=False)
    for envelope, state, body in (
        (whole, "incoming", b"whole\r\n"),
        (torn, "incoming", b"torn"),
        (empty, "processing", b""),
    ):
        path = root / state / f"{envelope.id}.eml"
        path.write_bytes(body)
        os.setxattr(path, ENVELOPE_XATTR, envelope.to_json())

    with caplog.at_level(logging.WARNING, logger="dispatch.spool"):
        spool = await Spool.open(root)

    assert [e.id for e in spool.entries()] == [whole.id]
    assert spool.recovery_report.torn_bodies_set_aside == 2
    assert (root / "orphaned" / f"{torn.id}.eml").read_bytes() == b"torn"
    assert (root / "orphaned" / f"{empty.id}.eml").read_bytes() == b""
    assert f"message {torn.id} is 4 bytes where its envelope says 14" in caplog.text
    assert not list((root / "incoming").glob(f"{torn.id}*"))
    assert not list((root / "processing").iterdir())
