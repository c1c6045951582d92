"""Getting the peers onto the machine: Debian packages, and what they need to run privately.

* Postfix (``postfix``) brings ``smtp-source`` (the load generator), ``smtp-sink`` (the sink)
  and the Postfix peer. Installing it may start a system Postfix on port 25; that one is
  stopped, because every server in the benchmark is one we start ourselves on a free port.
* OpenSMTPD (``opensmtpd``) conflicts with ``postfix`` in Debian (both provide
  ``mail-transport-agent``): installing it would remove the load generator. So its package is
  downloaded with ``apt-get download`` and unpacked into a cache directory, never installed;
  what its post-install script would do that the daemon needs (the ``opensmtpd`` and
  ``opensmtpq`` users, the empty chroot directory) is done here.

Every function returns what it found or a reason why the peer cannot be measured; nothing
here raises for a peer that is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench.procs import run_quiet

APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

OPENSMTPD_USERS = ("opensmtpd", "opensmtpq")
OPENSMTPD_CHROOT = Path("/var/lib/opensmtpd/empty")  # compiled into the Debian binary
OPENSMTPD_SPOOL = Path("/var/spool/smtpd")  # compiled in too: one OpenSMTPD per machine
OPENSMTPD_SOCKET = Path("/var/run/smtpd.sock")


@dataclass
class Tool:
    """A peer's software: where it is and its version, or why it is not available."""

    name: str
    version: str = ""
    path: Path | None = None
    reason: str = ""

    @property
    def available(self) -> bool:
        return not self.reason


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "dispatch-bench"


def _apt(*args: str, timeout: float = 600, cwd: Path | None = None) -> tuple[bool, str]:
    try:
        done = subprocess.run(
            ["apt-get", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=APT_ENV,
            cwd=cwd,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    output = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, "\n".join(output[-3:])


def ensure_postfix() -> Tool:
    """Postfix, ``smtp-source`` and ``smtp-sink``; installs the package if they are missing."""
    if not shutil.which("smtp-source") or not shutil.which("postfix"):
        if os.geteuid() != 0:
            return Tool("Postfix", reason="package postfix is not installed and we are not root")
        ok, output = _apt("install", "-y", "-q", "--no-install-recommends", "postfix")
        if not ok:
            _apt("update", "-q")
            ok, output = _apt("install", "-y", "-q", "--no-install-recommends", "postfix")
        if not ok:
            return Tool("Postfix", reason=f"apt-get install postfix failed: {output}")
    stop_system_postfix()
    version = run_quiet(["postconf", "-d", "-h", "mail_version"]).stdout.strip()
    return Tool("Postfix", version=version, path=Path("/usr/sbin/postfix"))


def stop_system_postfix() -> None:
    """Make sure the system's own Postfix instance (port 25) is not running."""
    if run_quiet(["postfix", "status"]).returncode == 0:
        run_quiet(["postfix", "stop"])


def ensure_opensmtpd() -> Tool:
    """OpenSMTPD's ``smtpd`` unpacked from its Debian package into :func:`cache_dir`."""
    name = "OpenSMTPD"
    if os.geteuid() != 0:
        return Tool(name, reason="needs root (it drops privileges to its own users)")
    if run_quiet(["pgrep", "-x", "smtpd"]).returncode == 0:
        return Tool(
            name,
            reason="another OpenSMTPD (smtpd) runs on this machine; its spool "
            f"{OPENSMTPD_SPOOL} and socket are compiled in, so a second cannot run",
        )
    root = cache_dir() / "opensmtpd"
    smtpd = root / "usr" / "sbin" / "smtpd"
    version_file = root / "VERSION"
    if not smtpd.exists():
        root.mkdir(parents=True, exist_ok=True)
        ok, output = _download("opensmtpd", root)
        if not ok:
            return Tool(name, reason=f"apt-get download opensmtpd failed: {output}")
    for user in OPENSMTPD_USERS:
        if run_quiet(["getent", "passwd", user]).returncode != 0:
            done = run_quiet(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    str(OPENSMTPD_CHROOT),
                    "--shell",
                    "/usr/sbin/nologin",
                    user,
                ]
            )
            if done.returncode != 0:
                return Tool(name, reason=f"cannot create user {user}: {done.stderr.strip()}")
    OPENSMTPD_CHROOT.mkdir(parents=True, exist_ok=True)
    missing = run_quiet(["ldd", str(smtpd)]).stdout
    if "not found" in missing:
        lines = [line.strip() for line in missing.splitlines() if "not found" in line]
        return Tool(name, reason="shared libraries missing: " + "; ".join(lines))
    version = version_file.read_text().strip() if version_file.exists() else "?"
    return Tool(name, version=version, path=smtpd)


def _download(package: str, root: Path) -> tuple[bool, str]:
    """``apt-get download`` the package into ``root`` and unpack it there."""
    ok, output = _apt("download", package, timeout=300, cwd=root)
    if not ok:
        _apt("update", "-q")
        ok, output = _apt("download", package, timeout=300, cwd=root)
    if not ok:
        return False, output
    debs = sorted(root.glob(f"{package}_*.deb"))
    if not debs:
        return False, "no .deb file after apt-get download"
    deb = debs[-1]
    try:
        unpacked = run_quiet(["dpkg-deb", "-x", str(deb), str(root)])
        if unpacked.returncode != 0:
            return False, unpacked.stderr.strip()
        version = run_quiet(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
        (root / "VERSION").write_text(f"{version} (Debian package, unpacked)\n")
    finally:
        deb.unlink(missing_ok=True)
    return True, ""


def python_peer() -> Tool:
    """aiosmtpd for the fair Python peer (installed into the nox venv by the session)."""
    try:
        version = metadata.version("aiosmtpd")
    except metadata.PackageNotFoundError:
        return Tool(
            "aiosmtpd+fsync",
            reason="aiosmtpd is not installed in this Python (nox -s bench installs it)",
        )
    return Tool("aiosmtpd+fsync", version=f"aiosmtpd {version}")


def can_unshare() -> str:
    """Why a private mount namespace does not work here, or "" if it does."""
    if not shutil.which("unshare"):
        return "unshare(1) is not installed"
    done = run_quiet(["unshare", "-m", "true"])
    return "" if done.returncode == 0 else f"unshare -m failed: {done.stderr.strip()}"
