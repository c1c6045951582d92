"""What is wrong with a ``POST /api/v1/messages`` request, as the ``400`` answer lists it.

Every problem is a :class:`Problem`: the field path and what to send instead. Field paths:
``from``, ``subject``, ``text``, ``html``; ``to[i]``/``cc[i]``/``bcc[i]`` is the i-th value
sent (a JSON list item or a repeated form field; a JSON string counts as ``[0]``), and one
value may hold several comma-separated addresses; ``tags[i]`` / ``o:tag[i]``;
``headers.<Name>`` / ``h:<Name>``; ``attachment[i]`` and ``inline[i]``; ``(body)`` for a body
that is not a JSON object.

At most :data:`MAX_PROBLEMS` problems are described; the others are only counted, and the
answer ends with one ``{"field": "(more)"}`` entry saying how many there were. A hostile body
may hold millions of faults, and each would cost memory and time to describe.

Pure: no I/O. :class:`ProblemList` collects the problems of one request, first while its
shape is read (:mod:`dispatch.api.request`), then while it is checked
(:mod:`dispatch.api.validation`), which raises :class:`ValidationError` with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

import attrs

__all__ = ["MAX_PROBLEMS", "Problem", "ProblemList", "ValidationError", "clip", "quote"]

# Problems described in full; beyond this they are only counted (see the module docstring).
MAX_PROBLEMS: Final = 20


@attrs.frozen
class Problem:
    """One thing wrong with a request: the field path and what to send instead."""

    field: str
    problem: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "problem": self.problem}


class ValidationError(Exception):
    """The request cannot become a message; ``problems`` lists the reasons (never empty).

    At most :data:`MAX_PROBLEMS` are described; ``more`` counts the others, ``unchecked`` the
    values left unchecked once the list was full. The API answers
    ``400 {"error": "validation failed", "detail": error.detail}``.
    """

    def __init__(self, problems: Sequence[Problem], more: int = 0, unchecked: int = 0) -> None:
        if not problems:
            raise ValueError("a ValidationError needs at least one problem")
        self.problems = tuple(problems)
        self.more = more
        self.unchecked = unchecked
        listed = "; ".join(f"{p.field}: {p.problem}" for p in self.problems)
        super().__init__(f"validation failed: {listed}" + (f"; and {more} more" if more else ""))

    @property
    def detail(self) -> list[dict[str, str]]:
        described = [p.as_dict() for p in self.problems]
        if self.more or self.unchecked:
            words = [f"{self.more} more problem{'s' if self.more != 1 else ''} not listed"]
            if self.unchecked:
                words.append(
                    f"{self.unchecked} more value{'s' if self.unchecked != 1 else ''} not checked"
                )
            described.append(
                {
                    "field": "(more)",
                    "problem": f"{' and '.join(words)} (at most {MAX_PROBLEMS} problems are "
                    "described); fix these and send again",
                }
            )
        return described


class ProblemList:
    """The problems of one request: the first :data:`MAX_PROBLEMS` kept, the rest counted.

    ``fields`` holds the top-level field of every problem, listed or not, so that a field
    already reported is never also reported missing.
    """

    def __init__(self, initial: Iterable[Problem] = (), more: int = 0) -> None:
        self.kept: list[Problem] = []
        self.more = more
        self.fields: set[str] = set()
        for problem in initial:
            self.append(problem)

    @property
    def full(self) -> bool:
        """Whether further problems are only counted."""
        return len(self.kept) >= MAX_PROBLEMS

    def add(self, field: str, problem: str) -> None:
        if self.full:
            self.skip(field, 1)
        else:
            self.append(Problem(field, problem))

    def append(self, problem: Problem) -> None:
        if self.full:
            self.skip(problem.field, 1)
        else:
            self.fields.add(_top_level(problem.field))
            self.kept.append(problem)

    def skip(self, field: str, count: int) -> None:
        """Count ``count`` problems of ``field`` without describing them."""
        self.fields.add(_top_level(field))
        self.more += count

    def __bool__(self) -> bool:
        return bool(self.kept)


def _top_level(field: str) -> str:
    """``to`` for ``to[3]``, ``headers`` for ``headers.X-Foo``."""
    return field.partition("[")[0].partition(".")[0]


def clip(text: str, limit: int = 64) -> str:
    """Shorten client text echoed into a problem."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(text: str) -> str:
    """Client text quoted into a problem, shortened."""
    return repr(clip(text, 80))
