"""Every commented example of config.toml.example loads when uncommented (issue 13, item 3),
and a key defined twice gets an error naming the key and both lines.

An example block, as the file's header says, is a commented ``[table]`` or ``[[table]]`` line
and the commented lines after it, up to the next line that is blank or a bare ``#``.
Enabling a block removes the ``# `` in front of each of its lines. A commented ``key = …``
line outside every block would be an example this test cannot see, so that fails too.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from dispatch.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.toml.example"

HEADER = re.compile(r"^# (\[\[?[A-Za-z0-9_.]+\]\]?)\s*(#.*)?$")
COMMENTED_KEY = re.compile(r"^#\s*[A-Za-z_][A-Za-z0-9_.-]*\s*=")
ENV_KEY = re.compile(r'^\s*\w+_env\s*=\s*"(\w+)"', re.MULTILINE)


@attrs.frozen
class Block:
    start: int  # index of the header line
    end: int  # index after the last line

    def name(self, lines: list[str]) -> str:
        header = lines[self.start][2:].split("#")[0].strip()
        body = "".join(lines[self.start : self.end])
        named = re.search(r'^# name = "([^"]+)"', body, re.MULTILINE)
        return f"{header} {named.group(1)}" if named else header


def example_blocks(lines: list[str]) -> list[Block]:
    blocks = []
    i = 0
    while i < len(lines):
        if HEADER.match(lines[i]):
            end = i + 1
            while end < len(lines) and lines[end].startswith("# "):
                end += 1
            blocks.append(Block(i, end))
            i = end
        else:
            i += 1
    return blocks


def enabled(lines: list[str], blocks: list[Block]) -> str:
    out = list(lines)
    for block in blocks:
        for i in range(block.start, block.end):
            out[i] = out[i][2:]
    return "".join(out)


LINES = EXAMPLE.read_text().splitlines(keepends=True)
BLOCKS = example_blocks(LINES)


def load_enabled(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for variable in ENV_KEY.findall(text):  # a block naming a variable is used with it set
        monkeypatch.setenv(variable, "example-secret")
    path = tmp_path / "dispatch.toml"
    path.write_text(text)
    return load_settings(path)


def test_the_example_blocks_are_found() -> None:
    names = [block.name(LINES) for block in BLOCKS]
    assert names == [
        "[[listener.users]]",
        "[[relays]] primary",
        "[[relays]] direct",
        "[[relays]] postmark",
        "[[relays]] mailgun",
        "[[relays]] ses",
        "[[dkim]]",
        "[[webhooks]]",
        "[[routes]]",
    ]


def test_no_commented_key_outside_a_block() -> None:
    inside = {i for block in BLOCKS for i in range(block.start, block.end)}
    stray = [
        f"line {i + 1}: {line.rstrip()}"
        for i, line in enumerate(LINES)
        if COMMENTED_KEY.match(line) and i not in inside
    ]
    assert stray == [], "commented keys outside any example block (start them with a header)"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name(LINES))
def test_each_example_block_loads_when_uncommented(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_enabled(enabled(LINES, [block]), tmp_path, monkeypatch)
    assert settings != load_settings(None)  # the block really added something


def test_all_example_blocks_load_when_uncommented_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_enabled(enabled(LINES, BLOCKS), tmp_path, monkeypatch)
    assert [r.name for r in settings.relays] == [
        "local",
        "primary",
        "direct",
        "postmark",
        "mailgun",
        "ses",
    ]
    assert len(settings.routes) == 1
    assert [u.username for u in settings.listener.users] == ["app"]


# --- a key defined twice ----------------------------------------------------------------------


def error_of(text: str, tmp_path: Path) -> str:
    path = tmp_path / "dispatch.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    (problem,) = caught.value.problems
    return str(problem)


def line_of(text: str, line: str) -> int:
    return text.splitlines().index(line) + 1


def test_routes_array_and_routes_tables_name_both_lines(tmp_path: Path) -> None:
    # What issue 13 met: `routes = []` high up, then the example [[routes]] uncommented.
    text = enabled(LINES, [BLOCKS[-1]]).replace(
        'default_relay = "local"\n', 'default_relay = "local"\nroutes = []\n', 1
    )
    message = error_of(text, tmp_path)
    first, second = line_of(text, "routes = []"), line_of(text, "[[routes]]")
    assert message == (
        f"routes: `routes = []` on line {first} and `[[routes]]` on line {second} define the "
        "same key twice; remove one of them (to add [[routes]] tables, delete `routes = []`)"
    )
    assert "immutable namespace" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '[listener]\nports = [2525]\nserver_name = "a"\n\n# again\nports = [25]\n',
            "listener.ports: `ports = [2525]` on line 2 and `ports = [25]` on line 6 define "
            "the same key twice; remove one of them",
            id="key-twice-in-a-table",
        ),
        pytest.param(
            "[spool]\nworker_count = 2\n[api]\nport = 8025\n[spool]\nmax_retries = 1\n",
            "spool: `[spool]` on line 1 and `[spool]` on line 5 define the same key twice; "
            "merge them into one table, or remove one",
            id="table-twice",
        ),
        pytest.param(
            "[listener]\nusers = []\nprocesses = 1\n[[listener.users]]\nusername = 'app'\n",
            "listener.users: `users = []` on line 2 and `[[listener.users]]` on line 4 define "
            "the same key twice; remove one of them (to add [[listener.users]] tables, delete "
            "`users = []`)",
            id="array-and-array-of-tables",
        ),
        pytest.param(
            "[[relays]]\nname = 'a'\nkind = 'local'\n[[relays]]\nname = 'b'\nkind = 'local'\n"
            "name = 'c'\n",
            "relays.name: `name = 'b'` on line 5 and `name = 'c'` on line 7 define the same "
            "key twice; remove one of them",
            id="twice-in-the-second-relay",
        ),
        pytest.param(
            "[listener]\nports = [\n  25,\n  587,\n]\nports = [\n  2525,\n]\n",
            "listener.ports: `ports = …` on line 2 and `ports = …` on line 6 define the same "
            "key twice; remove one of them",
            id="multi-line-values",
        ),
    ],
)
def test_a_key_defined_twice_names_the_key_and_both_lines(
    text: str, expected: str, tmp_path: Path
) -> None:
    assert error_of(text, tmp_path) == expected
