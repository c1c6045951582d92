"""The build's one step beyond pyproject.toml: the sans-IO SMTP core compiled with mypyc.

`dispatch/smtp/` (parsing, the state machine, the data line discipline, replies: standard
library only, typed under `mypy --strict`) is compiled into C extensions at install time,
next to its sources. Every command and reply of every session goes through it, and compiled
it costs an intake worker 5-7 % less CPU per message (docs/intake-cpu.md, round 11). The
sources stay the truth, and the build falls back to them: each extension is optional (no C
compiler: the same modules run as Python), a mypyc that cannot compile them leaves them as
Python too, and `DISPATCH_SMTP_AS_PYTHON=1` asks for that (the lint and typecheck sessions,
which run none of it). `tests/smtp/test_compiled.py` fails when an extension is older than
its source (reinstall: `./dev tests` does) and runs the core's tests on the sources too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup


def smtp_core_extensions() -> list[Extension]:
    if os.environ.get("DISPATCH_SMTP_AS_PYTHON") == "1":
        return []
    sources = sorted(
        str(path) for path in Path("dispatch/smtp").glob("*.py") if path.name != "__init__.py"
    )
    try:
        from mypyc.build import mypycify

        extensions = mypycify(sources, opt_level="3", group_name="dispatch_smtp_core")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - type errors exit; any failure: Python
        print(
            f"setup.py: the SMTP core stays Python: mypyc could not compile it ({exc})",
            file=sys.stderr,
        )
        return []
    for extension in extensions:
        extension.optional = True  # no C compiler: the pure-Python modules
    return extensions


setup(ext_modules=smtp_core_extensions())
