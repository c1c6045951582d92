"""The build's one step beyond pyproject.toml: the sans-IO SMTP core compiled with mypyc.

`dispatch/smtp/` (parsing, the state machine, the data line discipline, replies: standard
library only, typed under `mypy --strict`) is compiled into C extensions at install time,
next to its sources. Every command and reply of every session goes through it, and compiled
it costs an intake worker 5-7 % less CPU per message (docs/intake-cpu.md, round 11). The
sources stay the truth: each extension is optional, so where no C compiler is at hand the
build says so and Dispatch runs the same modules as Python. `tests/smtp/test_compiled.py`
fails when an extension is older than its source (reinstall: `./dev tests` does).
"""

from __future__ import annotations

from pathlib import Path

from mypyc.build import mypycify
from setuptools import setup

SMTP_CORE = sorted(
    str(path) for path in Path("dispatch/smtp").glob("*.py") if path.name != "__init__.py"
)

extensions = mypycify(SMTP_CORE, opt_level="3", group_name="dispatch_smtp_core")
for extension in extensions:
    extension.optional = True  # no C compiler: the pure-Python modules

setup(ext_modules=extensions)
