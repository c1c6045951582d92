"""What the configuration loader reports: one :class:`ConfigProblem` per thing wrong (a key
path and what to do), all of them at once in a :class:`ConfigError`.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class ConfigProblem:
    """One thing wrong with the configuration: where (a key path) and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """The configuration cannot be used; :attr:`problems` lists every reason at once."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")
