"""The command line's small rough edges (issue 13, item 9), each through ``python -m dispatch``.

``hash-password`` runs on a real pseudo-terminal (its controlling terminal, so getpass reads
from it) to press Ctrl-D and Ctrl-C at its prompt; the route-simulate example of
docs/delivery.md is run against config.toml.example with its [[routes]] example uncommented.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.config.test_example_blocks import BLOCKS, LINES, enabled

pytestmark = pytest.mark.slow  # a subprocess per check

REPO = Path(__file__).resolve().parents[2]

# Make the pty the child's controlling terminal (setsid + TIOCSCTTY + stdio), then exec.
LAUNCH = (
    "import os, sys; os.login_tty(int(sys.argv[1])); "
    "os.execv(sys.executable, [sys.executable, '-m', 'dispatch', *sys.argv[2:]])"
)
DEADLINE = 60.0


def dispatch(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DISPATCH_CONFIG"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "dispatch", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=REPO,
    )


class Terminal:
    """``python -m dispatch ARGS`` with a pseudo-terminal as its controlling terminal."""

    def __init__(self, *args: str) -> None:
        self.master, slave = os.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(slave), *args],
            pass_fds=(slave,),
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )
        os.close(slave)
        self.output = b""

    def read_until(self, text: bytes) -> None:
        deadline = time.monotonic() + DEADLINE
        while text not in self.output:
            assert self._read_some(deadline), f"no {text!r} on the terminal: {self.output!r}"

    def _read_some(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the terminal stayed silent; so far: {self.output!r}"
        ready, _, _ = select.select([self.master], [], [], remaining)
        if not ready:
            return True  # the assertion above ends the wait
        try:
            chunk = os.read(self.master, 4096)
        except OSError:  # EIO: every end of the slave side is closed
            return False
        self.output += chunk
        return bool(chunk)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def finish(self) -> tuple[int, str]:
        """Read to the end; the exit status and everything the terminal showed."""
        deadline = time.monotonic() + DEADLINE
        while self._read_some(deadline):
            pass
        code = self.process.wait(timeout=DEADLINE)
        os.close(self.master)
        return code, self.output.decode()


def lines_after_prompt(shown: str) -> list[str]:
    after = shown.rsplit("Password: ", 1)[1]
    return [line for line in after.replace("\r", "").split("\n") if line.strip()]


def test_hash_password_at_a_terminal_asks_twice_and_prints_a_hash() -> None:
    terminal = Terminal("hash-password")
    terminal.read_until(b"Password: ")
    terminal.type(b"correct horse battery\n")
    terminal.read_until(b"Again: ")
    terminal.type(b"correct horse battery\n")
    code, shown = terminal.finish()
    assert code == 0, shown
    assert "correct horse" not in shown  # not echoed
    assert re.search(r"\$argon2id\$v=19\$\S+", shown), shown


def test_ctrl_d_at_the_password_prompt_is_one_line_and_exit_1() -> None:
    terminal = Terminal("hash-password")
    terminal.read_until(b"Password: ")
    terminal.type(b"\x04")  # Ctrl-D at the start of a line: end of input
    code, shown = terminal.finish()
    assert "Traceback" not in shown
    assert lines_after_prompt(shown) == ["dispatch: no password given; nothing hashed"]
    assert code == 1


def test_ctrl_c_at_the_second_prompt_is_one_line_and_exit_130() -> None:
    terminal = Terminal("hash-password")
    terminal.read_until(b"Password: ")
    terminal.type(b"correct horse battery\n")
    terminal.read_until(b"Again: ")
    terminal.type(b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground process group
    code, shown = terminal.finish()
    assert "Traceback" not in shown
    after = shown.rsplit("Again: ", 1)[1].replace("\r", "").split("\n")
    assert [line for line in after if line.strip()] == ["dispatch: interrupted; nothing hashed"]
    assert code == 130 == 128 + signal.SIGINT


def test_hash_password_with_nothing_on_stdin_is_one_line_and_exit_1() -> None:
    closed = dispatch("hash-password")  # stdin is /dev/null: not a terminal, and empty
    assert closed.returncode == 1
    assert closed.stderr == "dispatch: no password on stdin; nothing hashed\n"
    assert closed.stdout == ""


def test_hash_password_minimum_is_stated_in_help_docs_and_enforced() -> None:
    assert "at least 12 characters" in " ".join(dispatch("--help").stdout.split())
    assert "at least 12 characters" in " ".join(dispatch("hash-password", "--help").stdout.split())
    readme = " ".join((REPO / "README.md").read_text().split())
    configuration = " ".join((REPO / "docs" / "configuration.md").read_text().split())
    assert "hash-password` makes a hash for `listener.users`" in readme
    assert "at least 12 characters" in readme
    assert "hash-password` (passwords of at least 12 characters)" in configuration
    short = dispatch("hash-password", "--stdin", stdin="eleven-char\n")
    assert short.returncode == 2
    assert "has 11 characters; use at least 12" in short.stderr
    good = dispatch("hash-password", "--stdin", stdin="twelve-chars\n")
    assert good.returncode == 0
    assert good.stdout.startswith("$argon2id$")


def test_check_config_on_a_missing_file_says_check_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    positional = dispatch("check-config", str(missing))
    assert positional.returncode == 2
    assert positional.stderr.splitlines() == [
        f"{missing}: 1 problem(s):",
        "  cannot read the file: No such file or directory; check the path",
    ]
    option = dispatch("check-config", "--config", str(missing))
    assert option.returncode == 2
    assert "No such file or directory; check the path given to --config" in option.stderr


def test_help_shows_examples() -> None:
    shown = dispatch("--help")
    assert shown.returncode == 0
    examples = shown.stdout.split("examples:\n", 1)[1]
    commands = re.findall(r"^  (python -m dispatch [^ ]+(?: [^ ]+)*?)(?:  |$)", examples, re.M)
    assert "python -m dispatch check-config dispatch.toml" in commands
    assert "python -m dispatch spool retry --all" in commands
    assert len(commands) >= 6


def test_invalid_choice_does_not_list_the_internal_intake_worker() -> None:
    wrong = dispatch("frob")
    assert wrong.returncode == 2
    assert "invalid choice: 'frob'" in wrong.stderr
    assert "'check-config'" in wrong.stderr
    assert "intake-worker" not in wrong.stderr
    assert "intake-worker" not in dispatch("--help").stdout
    # The main process still starts its workers this way.
    worker = dispatch("intake-worker", "--help")
    assert worker.returncode == 0
    assert "--link-fd" in worker.stdout


def documented_simulation() -> tuple[list[str], str]:
    """The ``$ python -m dispatch route simulate …`` example of docs/delivery.md, and the
    output printed under it."""
    text = (REPO / "docs" / "delivery.md").read_text()
    found = re.search(
        r"^\$ python -m dispatch (route simulate [^\n]*)\n(.*?)^```", text, re.M | re.S
    )
    assert found, "docs/delivery.md has no route simulate example"
    return found.group(1).split(), found.group(2)


def test_the_route_simulate_example_in_the_docs_prints_what_it_shows(tmp_path: Path) -> None:
    args, output = documented_simulation()
    routes = [b for b in BLOCKS if b.name(LINES) == "[[routes]]"]
    config = tmp_path / "dispatch.toml"
    config.write_text(enabled(LINES, routes))
    shown = dispatch(*args, "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == output

    # What the paragraph after it says of a failover list and of no match.
    primary = [b for b in BLOCKS if b.name(LINES) == "[[relays]] primary"]
    failover = enabled(LINES, primary + routes).replace(
        'relay = ["local"]', 'relay = ["primary", "local"]'
    )
    config.write_text(failover)
    secret = {"PRIMARY_RELAY_PASSWORD": "x"}  # the primary example reads it from there
    over = dispatch(*args, "--config", str(config), env=secret)
    assert over.stdout.rstrip().endswith(": primary then local"), over.stderr
    other = ("route", "simulate", "a@example.com", "b@example.org", "--config", str(config))
    no_match = dispatch(*other, env=secret)
    assert no_match.stdout.rstrip().endswith(": no rule matched: default_relay local")
