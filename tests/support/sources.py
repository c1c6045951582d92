"""Dispatch imported from its ``.py`` files even where setup.py's mypyc build put a compiled
extension beside them (Python would import the extension).

For what needs the Python code itself: the fuzz targets (atheris follows the branches of
Python code only) and the run of the SMTP core's tests as Python in
``tests/smtp/test_compiled.py`` (the build's fallback where no C compiler is at hand).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType


class _SourcesFirst(importlib.abc.MetaPathFinder):
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
    """Import Dispatch from its sources from here on; before anything of it is imported."""
    imported = sorted(name for name in sys.modules if name.startswith("dispatch."))
    if imported:
        raise RuntimeError(f"import_sources() after Dispatch was imported ({imported[0]} …)")
    sys.meta_path.insert(0, _SourcesFirst())
