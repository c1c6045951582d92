"""How every fuzz target runs: ``python -m tests.fuzz.<target> [libFuzzer flags] [corpus]``.

A target imports the code under test inside ``atheris.instrument_imports(include=["dispatch"])``
(only Dispatch is instrumented: coverage of the standard library would drown the signal that
guides the mutations), defines ``TestOneInput(data: bytes)`` and calls :func:`fuzz` from its
``__main__`` block. ``test_fuzz.py`` runs each target for a bounded time in CI.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import atheris  # type: ignore[import-untyped]


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds Dispatch's modules by their ``.py`` files even where setup.py's mypyc build put
    a compiled extension beside them (Python would import the extension): atheris can follow
    the branches of Python code only."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not name.startswith("dispatch.") or path is None:
            return None
        for folder in path:
            source = Path(folder) / f"{name.rpartition('.')[2]}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(name, source)
        return None


def import_sources() -> None:
    """Import Dispatch from its sources from here on (call it before the instrumented imports)."""
    sys.meta_path.insert(0, _SourcesFirst())


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
