"""The SMTP core as setup.py builds it: compiled by mypyc where a C compiler is at hand, never
older than its sources, and passing its tests as Python too (the build's fallback).

Python imports an extension module rather than the ``.py`` beside it, so an edit to
``dispatch/smtp/*.py`` takes effect only once the package is built again (``./dev tests``
reinstalls it; by hand, ``pip install -e .``). A stale build fails here instead of testing
yesterday's code.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
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
    orphans = [
        built.name
        for built in SMTP_CORE.glob(f"*{SUFFIX}")
        if not built.with_name(built.name.removesuffix(SUFFIX) + ".py").exists()
    ]
    assert not orphans, f"{orphans} have no source: remove them (`git clean -fX dispatch/smtp`)"


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: the core runs as Python")
@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.stem)
def test_with_a_c_compiler_the_smtp_core_runs_compiled(source: Path) -> None:
    module = importlib.import_module(f"dispatch.smtp.{source.stem}")
    assert module.__file__ is not None
    assert module.__file__.endswith(SUFFIX), f"{module.__file__}: setup.py's build did not run"


def test_the_smtp_core_passes_its_tests_as_python() -> None:
    """Where no C compiler is at hand the build falls back to the sources: the core's own
    tests (this file aside) pass on them too, in a process that imports them."""
    run = (
        "import sys\n"
        "from tests.support.sources import import_sources\n"
        "import_sources()\n"
        "import pytest\n"
        "code = pytest.main(['-q', '-p', 'no:randomly', '-p', 'no:cacheprovider',"
        " 'tests/smtp', '--ignore', 'tests/smtp/test_compiled.py'])\n"
        "import dispatch.smtp.server\n"
        "assert dispatch.smtp.server.__file__.endswith('.py'), dispatch.smtp.server.__file__\n"
        "sys.exit(code)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", run], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout
