"""How every fuzz target runs: ``python -m tests.fuzz.<target> [libFuzzer flags] [corpus]``.

A target first makes Dispatch import from its sources (``tests.support.sources``: atheris can
follow Python code, not the SMTP core's compiled build), then imports the code under test inside
``atheris.instrument_imports(include=["dispatch"])``
(only Dispatch is instrumented: coverage of the standard library would drown the signal that
guides the mutations), defines ``TestOneInput(data: bytes)`` and calls :func:`fuzz` from its
``__main__`` block. ``test_fuzz.py`` runs each target for a bounded time in CI.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris  # type: ignore[import-untyped]


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
