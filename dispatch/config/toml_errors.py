"""Plain-words explanations of TOML errors, for the one kind ``tomllib`` explains badly.

``tomllib`` reports a key or table defined twice as ``Cannot overwrite a value``, ``Cannot
declare ('a',) twice`` or ``Cannot mutate immutable namespace ('routes',)``, with the line of
the second definition only. :func:`explain_duplicate` finds the key and the line of the first
definition and says both, and what to do::

    routes: `routes = []` on line 18 and `[[routes]]` on line 196 define the same key
    twice; remove one of them (to add [[routes]] tables, delete `routes = []`)

It uses ``tomllib`` itself as the oracle, by parsing prefixes of the text (whole lines), so
quoting, multi-line strings and arrays, dotted keys and arrays of tables are understood
exactly as the parser understands them. That costs one parse per line walked back, so files
longer than :data:`MAX_LINES` (configuration files are a few hundred) get ``tomllib``'s own
message.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any, Final

MAX_LINES: Final = 2000

_DUPLICATE_MESSAGES: Final = ("Cannot overwrite a value", "Cannot declare", "Cannot mutate")
_POSITION: Final = re.compile(r"\(at line (\d+), column \d+\)")
_INLINE_DUPLICATE: Final = re.compile(r"Duplicate inline table key '(.*)' \(at line (\d+)")
_SIMPLE: Final = r"(?:[A-Za-z0-9_-]+|\"(?:[^\"\\]|\\.)*\"|'[^']*')"
_KEY: Final = re.compile(rf"\s*({_SIMPLE}(?:\s*\.\s*{_SIMPLE})*)\s*=")
_HEADER: Final = re.compile(rf"\s*(\[\[?)\s*({_SIMPLE}(?:\s*\.\s*{_SIMPLE})*)\s*\]\]?")
_PROBE: Final = "__dispatch_probe__"

type KeyPath = tuple[str, ...]


def explain(exc: tomllib.TOMLDecodeError, text: str) -> tuple[str, str]:
    """``(key path, message)`` for a TOML error; key path "" when there is none to name."""
    message = str(exc)
    inline = _INLINE_DUPLICATE.search(message)
    if inline:
        return "", (
            f"key {inline.group(1)!r} appears twice in the inline table on line "
            f"{inline.group(2)}; remove one of them"
        )
    if message.startswith(_DUPLICATE_MESSAGES):
        explained = explain_duplicate(message, text)
        if explained is not None:
            return explained
    return "", f"is not valid TOML: {message}"


def explain_duplicate(message: str, text: str) -> tuple[str, str] | None:
    """Name the twice-defined key and both lines; None when that cannot be worked out."""
    position = _POSITION.search(message)
    lines = text.splitlines(keepends=True)
    if position is None or len(lines) > MAX_LINES:
        return None
    error_line = int(position.group(1))
    second_start = _statement_start(lines, error_line)
    if second_start is None:
        return None
    second = _statement(lines, second_start)
    if second is None:
        return None
    second_text, second_path = second
    if second_text.startswith("["):
        path = second_path
    else:
        table = _current_table(lines, second_start - 1)
        if table is None:
            return None
        path = table + second_path
    first = _first_definition(lines, second_start - 1, path)
    if first is None:
        return None
    first_line, first_path = first
    first_statement = _statement(lines, first_line)
    first_text = first_statement[0] if first_statement else lines[first_line - 1].strip()
    key = ".".join(first_path)
    advice = "remove one of them"
    if first_text.endswith("[]") and second_text.startswith("[["):
        advice += f" (to add {second_text} tables, delete `{first_text}`)"
    elif first_text.startswith("[") and second_text.startswith("["):
        advice = "merge them into one table, or remove one"
    return key, (
        f"`{first_text}` on line {first_line} and `{second_text}` on line {second_start} "
        f"define the same key twice; {advice}"
    )


def _parses(lines: list[str], count: int) -> dict[str, Any] | None:
    try:
        return tomllib.loads("".join(lines[:count]))
    except tomllib.TOMLDecodeError:
        return None


def _statement_start(lines: list[str], error_line: int) -> int | None:
    """The first line of the statement that holds ``error_line`` (a value may span lines)."""
    for before in range(error_line - 1, -1, -1):
        if _parses(lines, before) is not None:
            start = before + 1
            while start <= error_line and _is_blank(lines[start - 1]):
                start += 1
            return start
    return None


def _is_blank(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _statement(lines: list[str], number: int) -> tuple[str, KeyPath] | None:
    """The short text (``[[routes]]``, ``routes = []``) and key path of the statement at
    line ``number`` (1-based)."""
    line = lines[number - 1]
    header = _HEADER.match(line)
    if header:
        path = _key_path(header.group(2))
        if path is None:
            return None
        closing = "]]" if header.group(1) == "[[" else "]"
        return f"{header.group(1)}{header.group(2).strip()}{closing}", path
    key = _KEY.match(line)
    if key is None:
        return None
    path = _key_path(key.group(1))
    if path is None:
        return None
    text = line.strip()
    unbalanced = text.count("[") != text.count("]") or text.count("{") != text.count("}")
    if "#" in text or len(text) > 60 or unbalanced:  # show the key alone, not half a value
        text = f"{key.group(1).strip()} = …"
    return text, path


def _key_path(key: str) -> KeyPath | None:
    """The parts of a (dotted, maybe quoted) key, as TOML reads them."""
    try:
        value: Any = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(value, dict) and len(value) == 1:
        ((name, value),) = value.items()
        path.append(name)
    return tuple(path)


def _current_table(lines: list[str], count: int) -> KeyPath | None:
    """The table a key/value line after the first ``count`` lines goes into."""
    document = _parses([*lines[:count], f"\n{_PROBE} = 0\n"], count + 1)
    if document is None:
        return None
    return _find_probe(document)


def _find_probe(value: Any) -> KeyPath | None:
    if isinstance(value, list):
        return _find_probe(value[-1]) if value else None
    if not isinstance(value, dict):
        return None
    if _PROBE in value:
        return ()
    for name, child in value.items():
        found = _find_probe(child)
        if found is not None:
            return (name, *found)
    return None


def _lookup(document: dict[str, Any], path: KeyPath) -> bool:
    """Whether ``path`` exists (through the last table of an array of tables)."""
    value: Any = document
    for name in path:
        if isinstance(value, list) and value and isinstance(value[-1], dict):
            value = value[-1]
        if not isinstance(value, dict) or name not in value:
            return False
        value = value[name]
    return True


def _first_definition(lines: list[str], count: int, path: KeyPath) -> tuple[int, KeyPath] | None:
    """Where the key the second statement clashes with came into being: ``(line, key)``.

    The key is ``path`` or, when a shorter prefix of it is a plain value (``a = 1`` then
    ``[a.b]``), that prefix. Walking back from line ``count``, the first prefix of the text
    that parses without the key ends just before its definition.
    """
    document = _parses(lines, count)
    if document is None:
        return None
    for length in range(len(path), 0, -1):
        key = path[:length]
        if not _lookup(document, key):
            continue
        defined_at = count
        for before in range(count - 1, -1, -1):
            earlier = _parses(lines, before)
            if earlier is None:
                continue
            if not _lookup(earlier, key):
                start = before + 1
                while start < defined_at and _is_blank(lines[start - 1]):
                    start += 1
                return start, key
            defined_at = before
        return None
    return None
