"""The layer contracts of pyproject.toml (``[tool.importlinter]``, docs/architecture.md "Layers").

``lint-imports`` (import-linter) runs here as ``nox -s lint`` runs it: the real tree keeps
every contract, and each contract fails, naming itself and the offending import, when a copy
of the tree gets one deliberately wrong import.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
_VERDICT = re.compile(r"^(?P<name>.+) (?P<verdict>KEPT|BROKEN)$", re.MULTILINE)


def contracts() -> dict[str, str]:
    """Contract id -> name, as pyproject.toml declares them."""
    config: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["id"]: c["name"] for c in config["tool"]["importlinter"]["contracts"]}


def lint_imports(project: Path) -> tuple[int, str, dict[str, str]]:
    """Run ``lint-imports`` on ``project`` (its pyproject.toml, its ``dispatch`` package);
    return the exit code, the output and each contract's verdict by name."""
    assert LINT_IMPORTS.exists(), (
        f"{LINT_IMPORTS} is missing: install the test extra (pip install -e '.[test]'), "
        "which brings import-linter"
    )
    env = {**os.environ, "PYTHONPATH": str(project), "COLUMNS": "300"}
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(project / "pyproject.toml")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    verdicts = {m["name"]: m["verdict"] for m in _VERDICT.finditer(output)}
    return done.returncode, output, verdicts


def copy_with(tmp_path: Path, module: str, source: str) -> Path:
    """A copy of the project (package and config) with ``module`` added, holding ``source``."""
    shutil.copytree(
        ROOT / "dispatch", tmp_path / "dispatch", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
    path.write_text(f'"""A deliberately wrong import."""\n\n{source}\n')
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    code, output, verdicts = lint_imports(ROOT)
    assert verdicts == dict.fromkeys(contracts().values(), "KEPT"), output
    assert code == 0, output


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        # The local relay is handed a capture sink; no relay reaches for the spool.
        ("dispatch.relays.wrong", "from dispatch.spool import Spool", {"relays-without-spool"}),
        # API keys: security must not reach into storage, nor storage into security.
        (
            "dispatch.security.wrong",
            "from dispatch.storage.api_keys import ApiKeyStore",
            {"layers", "storage-security"},
        ),
        (
            "dispatch.storage.wrong",
            "from dispatch.security.key_format import hash_api_key",
            {"storage-security"},
        ),
        # The SMTP core is sans-IO: no trio, nothing of Dispatch outside smtp/.
        ("dispatch.smtp.wrong", "import trio", {"sans-io-smtp"}),
        ("dispatch.smtp.wrong", "from dispatch.logs import printable", {"sans-io-smtp"}),
        # Rooms are handed their objects; none imports the wiring above it.
        (
            "dispatch.intake.wrong",
            "from dispatch.supervisor import Supervisor",
            {"layers", "no-wiring-below"},
        ),
        ("dispatch.web.wrong", "import dispatch.daemon", {"layers", "no-wiring-below"}),
        # Downward only: the spool knows nothing of delivery.
        ("dispatch.spool.wrong", "from dispatch.delivery import attempt", {"layers"}),
        # A new room must be given its place among the layers.
        ("dispatch.newroom", "from dispatch.logs import printable", {"layers"}),
        # The HTTP API enters mail through the intake door, not intake's internals...
        ("dispatch.api.wrong", "import dispatch.intake.session", {"api-intake-door"}),
        # ... and does not write the spool itself.
        ("dispatch.api.wrong", "from dispatch.spool import Spool", {"api-intake-door"}),
    ],
)
def test_a_wrong_import_breaks_the_contract_against_it(
    tmp_path: Path, module: str, source: str, broken: set[str]
) -> None:
    project = copy_with(tmp_path, module, source)
    code, output, verdicts = lint_imports(project)
    names = contracts()
    assert code != 0, output
    expected = {name: "BROKEN" if id_ in broken else "KEPT" for id_, name in names.items()}
    assert verdicts == expected, output
    assert module in output  # the offending module is named


def test_the_door_is_what_the_api_may_import_of_intake(tmp_path: Path) -> None:
    project = copy_with(
        tmp_path, "dispatch.api.fine", "from dispatch.intake.door import IntakeDoor"
    )
    code, output, verdicts = lint_imports(project)
    assert verdicts == dict.fromkeys(contracts().values(), "KEPT"), output
    assert code == 0, output


def test_every_intake_module_but_the_door_is_closed_to_the_api() -> None:
    """A module added to intake/ is internal unless this contract is changed on purpose."""
    config: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [contract] = [
        c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "api-intake-door"
    ]
    forbidden = {m for m in contract["forbidden_modules"] if m.startswith("dispatch.intake.")}
    internals = {
        f"dispatch.intake.{path.stem}"
        for path in (ROOT / "dispatch" / "intake").glob("*.py")
        if path.stem not in ("__init__", "door")
    }
    assert forbidden == internals
