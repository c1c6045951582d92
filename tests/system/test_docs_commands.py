"""The shell blocks of README.md and docs/ marked ``<!-- runnable -->`` run as printed.

Each marked block runs against a live daemon started the way the docs start it (``dispatch.toml``
in the current directory, the default data and spool folders beside it), with the current
directory and ``PATH`` the docs assume after the quick start (``dispatch`` and a ``python``
that has Dispatch come first). Only the ports differ: the docs say 8025, 8420 and 1099, the test
takes free ones. ``curl`` gets ``--fail-with-body`` so an HTTP error fails the command.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from tests.conftest import Daemon, free_port

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]

ROOT = Path(__file__).parents[2]
MARK = "<!-- runnable -->"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@attrs.frozen
class Block:
    where: str  # docs/api.md:12
    commands: tuple[str, ...]


def _complete(command: str) -> bool:
    if command.endswith("\\"):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:  # a quote still open: the command goes on on the next line
        return False
    return True


def commands_of(body: list[str]) -> tuple[str, ...]:
    """The commands of a block: its ``$ `` lines (the rest is output), or every line if it
    has no prompt; a line that ends in a backslash or leaves a quote open goes on."""
    prompted = any(line.startswith("$ ") for line in body)
    commands: list[str] = []
    pending: str | None = None
    for line in body:
        if pending is not None:
            pending += "\n" + line
        elif (prompted and not line.startswith("$ ")) or line.lstrip()[:1] in ("", "#"):
            continue
        else:
            pending = line.removeprefix("$ ")
        if _complete(pending):
            commands.append(pending)
            pending = None
    assert pending is None, f"a command never ends: {pending!r}"
    return tuple(commands)


def runnable_blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        assert lines[number + 1].startswith("```"), f"{path}:{number + 1}: no block after {MARK}"
        end = lines.index("```", number + 2)
        where = f"{path.relative_to(ROOT)}:{number + 3}"
        yield Block(where, commands_of(lines[number + 2 : end]))


BLOCKS = [block for path in DOCS for block in runnable_blocks(path)]


def test_the_docs_mark_blocks_to_run() -> None:
    files = {block.where.partition(":")[0] for block in BLOCKS}
    assert {"docs/api.md", "docs/delivery.md", "docs/operations.md"} <= files, files
    assert all(block.commands for block in BLOCKS), BLOCKS


def test_commands_are_read_as_a_shell_reads_them() -> None:
    body = ['$ curl -d \'{"a":', '  "b"}\' \\', "  -s x", "{output}", "$ echo 2  # note"]
    assert commands_of(body) == ('curl -d \'{"a":\n  "b"}\' \\\n  -s x', "echo 2  # note")


@attrs.frozen
class Ports:
    smtp: int = attrs.field(factory=free_port)
    api: int = attrs.field(factory=free_port)
    webui: int = attrs.field(factory=free_port)
    monitoring: int = attrs.field(factory=free_port)

    def config(self) -> str:
        return f"""
            [listener]
            ports = [{self.smtp}]
            bind_address = "127.0.0.1"
            [api]
            port = {self.api}
            tls_port = {free_port()}
            bind_address = "127.0.0.1"
            [webui]
            port = {self.webui}
            bind_address = "127.0.0.1"
            [monitoring]
            address = "127.0.0.1:{self.monitoring}"
        """

    def rewrite(self, command: str) -> str:
        for documented, port in ((8025, self.api), (8420, self.webui), (1099, self.monitoring)):
            command = command.replace(f"127.0.0.1:{documented}/", f"127.0.0.1:{port}/")
        return re.sub(r"^curl ", "curl --fail-with-body ", command)


def run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_every_runnable_command_works_against_a_live_daemon(
    start_daemon: Start, tmp_path: Path
) -> None:
    ports = Ports()
    daemon = start_daemon(ports.config())
    daemon.wait_for("all components ready")
    for name in ("invoice.pdf", "terms.txt"):  # the files docs/api.md attaches
        (tmp_path / name).write_bytes(b"%PDF-1.4 an attachment\n")
    env = {k: v for k, v in os.environ.items() if k != "DISPATCH_CONFIG"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for block in BLOCKS:
        for command in block.commands:
            if "$DISPATCH_KEY" in command and "DISPATCH_KEY" not in env:
                env["DISPATCH_KEY"] = _new_key(tmp_path, env)
            done = run(ports.rewrite(command), tmp_path, env)
            assert done.returncode == 0, (block.where, command, done.stdout, done.stderr)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def _new_key(cwd: Path, env: dict[str, str]) -> str:
    done = run("dispatch api-key create --name docs-test", cwd, env)
    assert done.returncode == 0, done.stderr
    return max((w for w in done.stdout.split() if w.startswith("dsp_live_")), key=len)
