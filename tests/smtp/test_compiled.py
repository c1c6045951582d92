"""The SMTP core as setup.py builds it: compiled by mypyc where a C compiler is at hand, and
never older than its sources.

Python imports an extension module rather than the ``.py`` beside it, so an edit to
``dispatch/smtp/*.py`` takes effect only once the package is built again (``./dev tests``
reinstalls it; by hand, ``pip install -e .``). A stale build fails here instead of testing
yesterday's code.
"""

from __future__ import annotations

import importlib
import shutil
import sysconfig
from pathlib import Path

import pytest

import dispatch.smtp

SMTP_CORE = Path(dispatch.smtp.__file__).parent
SOURCES = sorted(path for path in SMTP_CORE.glob("*.py") if path.name != "__init__.py")
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


def test_no_compiled_module_of_the_smtp_core_is_older_than_its_source() -> None:
    stale = [
        source.name
        for source in SOURCES
        if (built := source.with_name(source.stem + SUFFIX)).exists()
        and built.stat().st_mtime < source.stat().st_mtime
    ]
    assert not stale, f"{stale} changed after the build: rebuild with `pip install -e .`"


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: the core runs as Python")
@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.stem)
def test_with_a_c_compiler_the_smtp_core_runs_compiled(source: Path) -> None:
    module = importlib.import_module(f"dispatch.smtp.{source.stem}")
    assert module.__file__ is not None
    assert module.__file__.endswith(SUFFIX), f"{module.__file__}: setup.py's build did not run"
