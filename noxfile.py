"""Developer and CI entry points; the README runs them through `./dev` (`./dev tests`)."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests"]

PYTHON = "3.13"
# Sessions that run none of Dispatch skip setup.py's compiling of the SMTP core.
AS_PYTHON = {"DISPATCH_SMTP_AS_PYTHON": "1"}


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """Run Dispatch on its embedded defaults (or pass arguments: `nox -s serve -- --help`)."""
    session.install("-e", ".")
    session.run("python", "-m", "dispatch", *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite, system tests included (`-- -m "not slow"` for the quick part)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, including the ASYNC rules, the formatting check, and the layer contracts
    (import-linter: `[tool.importlinter]` in pyproject.toml, docs/architecture.md "Layers")."""
    session.install("-e", ".[lint]", env=AS_PYTHON)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports", "--no-cache")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package and the tests."""
    session.install("-e", ".[typecheck]", env=AS_PYTHON)
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against real peers; rewrites docs/benchmarks.md (`-- --full`: the long run).

    Needs root on Debian: installs postfix (smtp-source, smtp-sink) and unpacks opensmtpd if
    they are missing. Everything it starts listens on 127.0.0.1 and is stopped at the end.
    """
    session.install("-e", ".[bench]")
    session.run("python", "-m", "bench", *session.posargs)


@nox.session(python=PYTHON)
def reliability(session: nox.Session) -> None:
    """The fault and abuse suite alone (docs/reliability.md); `-- --long` for the long variants.

    The long variants kill the daemon 180 times instead of 36, fuzz each target for 10
    minutes instead of 20 s and run the spool state machine ten times longer (about 45
    minutes in all). Every scenario's figures go to `.nox/reliability-report.jsonl`, which is
    where docs/reliability.md takes its numbers from. Needs root (tmpfs and bind mounts) and
    Postfix's smtp-sink (Debian package postfix), like `nox -s tests` in CI.
    """
    session.install("-e", ".[test]")
    args = list(session.posargs)
    env = {"DISPATCH_RELIABILITY_REPORT": str(Path(".nox/reliability-report.jsonl").absolute())}
    Path(env["DISPATCH_RELIABILITY_REPORT"]).unlink(missing_ok=True)
    if "--long" in args:
        args.remove("--long")
        env["DISPATCH_RELIABILITY_LONG"] = "1"
    suites = sorted(str(p) for p in Path("tests/system").glob("test_reliability_*.py"))
    suites += sorted(str(p) for p in Path("tests/system").glob("test_abuse_*.py"))
    suites += ["tests/fuzz", "tests/spool/test_spool_stateful.py"]
    session.run("pytest", "-s", *suites, *args, env=env)
