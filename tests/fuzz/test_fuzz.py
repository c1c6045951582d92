"""Scenario 6 (coverage-guided fuzzing): each atheris target runs for a bounded time.

The targets (``fuzz_*.py``) cover the SMTP server core, the SMTP client core and the API's
request parsing and MIME composition. Each run starts from the checked-in seeds in
``corpus/<target>/`` (read only: new inputs go to a temporary directory) and must end without
a crash, a timeout or running out of memory; a finding is left as ``crash-*`` in the test's
temporary directory and its bytes are shown in the failure. 20 s per target in CI, 10 minutes
with ``nox -s reliability -- --long``.

To fuzz by hand: ``python -m tests.fuzz.fuzz_smtp_server -max_total_time=600 /tmp/corpus
tests/fuzz/corpus/smtp_server`` (from the repository root).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system.faults import LONG, report

ROOT = Path(__file__).resolve().parents[2]
SEEDS = Path(__file__).parent / "corpus"
TARGETS = ("smtp_server", "smtp_client", "api_compose")
SECONDS = 600 if LONG else 20


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_finds_nothing(target: str, tmp_path: Path) -> None:
    found = tmp_path / "corpus"
    found.mkdir()
    command = [
        sys.executable,
        "-m",
        f"tests.fuzz.fuzz_{target}",
        f"-max_total_time={SECONDS}",
        "-timeout=10",  # one input taking longer is a finding (a hang, quadratic parsing)
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={tmp_path}/",
        str(found),
        str(SEEDS / target),
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120, check=False
    )
    findings = {p.name: p.read_bytes()[:500] for p in tmp_path.glob("*-*") if p.is_file()}
    assert not findings, f"fuzz_{target} found something: {findings}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, done.stderr[-3000:]
    runs = re.search(r"stat::number_of_executed_units: (\d+)", done.stderr)
    coverage = re.findall(r"cov: (\d+)", done.stderr)
    assert runs is not None, done.stderr[-2000:]
    assert int(runs.group(1)) > 1000, "the target barely ran"
    report(
        f"fuzz {target}",
        {
            "seconds": SECONDS,
            "executions": int(runs.group(1)),
            "coverage edges": int(coverage[-1]) if coverage else None,
            "seeds": len(list((SEEDS / target).iterdir())),
            "new corpus entries": len(list(found.iterdir())),
        },
    )
