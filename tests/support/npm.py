"""Node packages the SDK tests drive (postmark.js, mailgun.js), installed once under .nox/.

The registry is reached over the network, which can stall: each attempt is bounded, npm's own
fetches time out and retry, and a stalled attempt is tried again before the test fails with
what npm said.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
ATTEMPTS: Final = 3
ATTEMPT_SECONDS: Final = 240
SYSTEM_CAS: Final = Path("/etc/ssl/certs/ca-certificates.crt")


def node_modules(name: str, packages: tuple[str, ...], marker: str) -> Path:
    """``.nox/<name>/node_modules`` with ``packages``; ``marker`` is the package whose
    ``package.json`` says they are there already."""
    prefix = ROOT / ".nox" / name
    installed = prefix / "node_modules"
    if (installed / marker / "package.json").exists():
        return installed
    prefix.mkdir(parents=True, exist_ok=True)
    command = [
        "npm", "install", "--no-audit", "--no-fund", "--fetch-timeout=60000",
        "--fetch-retries=4", "--prefix", str(prefix), *packages,
    ]  # fmt: skip
    # Node trusts only its own CA list; where the registry is reached through a gateway whose
    # CA only the system trusts, npm needs the system's bundle too (as pip gets it by pip.conf).
    env = dict(os.environ)
    if "NODE_EXTRA_CA_CERTS" not in env and SYSTEM_CAS.exists():
        env["NODE_EXTRA_CA_CERTS"] = str(SYSTEM_CAS)
    failures: list[str] = []
    for _ in range(ATTEMPTS):
        try:
            done = subprocess.run(
                command, env=env, timeout=ATTEMPT_SECONDS, capture_output=True, text=True
            )
        except subprocess.TimeoutExpired:
            failures.append(f"no answer within {ATTEMPT_SECONDS} s")
            continue
        if done.returncode == 0:
            return installed
        failures.append(done.stderr.strip()[-500:])
    raise AssertionError(f"npm install {' '.join(packages)} failed: " + " | ".join(failures))
