"""The machine a run measured: CPU, memory, disk, kernel, Python, and what an fsync costs.

Everything is read from ``/proc``, ``/sys`` and ``os``; the fsync probe writes 5 KiB files
and fsyncs them in the directory the servers' spools live in, which is the cost every
durable-intake figure is built on.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import run_quiet
from bench.stats import median, percentile

FSYNC_PROBES = 200


@dataclass
class Machine:
    cpu: str
    cores: int
    memory: str
    disk: str
    kernel: str
    python: str
    virtualisation: str
    fsync_ms: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[tuple[str, str]]:
        fsync = (
            f"median {self.fsync_ms['p50']:.2f} ms, p99 {self.fsync_ms['p99']:.2f} ms "
            f"(5 KiB file write + fsync, one at a time, {FSYNC_PROBES} times)"
            if self.fsync_ms
            else "n/a"
        )
        return [
            ("CPU", self.cpu),
            ("cores", str(self.cores)),
            ("memory", self.memory),
            ("disk", self.disk),
            ("fsync", fsync),
            ("kernel", self.kernel),
            ("virtualisation", self.virtualisation),
            ("Python", self.python),
        ]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def _mount_of(path: Path) -> tuple[str, str, str]:
    """(device, mount point, filesystem type) of the mount holding ``path``."""
    best = ("?", "/", "?")
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, fstype = line.split()[:3]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[1]):
            best = (device, mount, fstype)
    return best


def _disk(path: Path) -> str:
    device, mount, fstype = _mount_of(path)
    name = Path(device).name
    kind = "unknown medium"
    rotational = Path(f"/sys/block/{name}/queue/rotational")
    if rotational.exists():
        kind = "rotational" if rotational.read_text().strip() == "1" else "non-rotational (SSD)"
    if name.startswith("vd"):
        kind += ", virtio block device (its rotational flag is the hypervisor's default)"
    usage = shutil.disk_usage(path)
    return f"{device} ({fstype}) on {mount}, {kind}, {usage.total / 2**30:.0f} GiB"


def _virtualisation() -> str:
    found = []
    if shutil.which("systemd-detect-virt"):
        found.append(run_quiet(["systemd-detect-virt"]).stdout.strip())
    if shutil.which("lscpu"):
        for line in run_quiet(["lscpu"]).stdout.splitlines():
            if line.startswith("Hypervisor vendor"):
                found.append("hypervisor " + line.split(":", 1)[1].strip())
    return ", ".join(item for item in found if item and item != "none") or "none detected"


def fsync_probe(directory: Path) -> dict[str, float]:
    """Milliseconds per (write 5 KiB + fsync) in ``directory``: p50 and p99."""
    directory.mkdir(parents=True, exist_ok=True)
    data = b"x" * 5120
    samples = []
    for number in range(FSYNC_PROBES):
        path = directory / f"fsync-probe-{number}"
        began = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        samples.append((time.perf_counter() - began) * 1000)
        path.unlink()
    return {"p50": median(samples), "p99": percentile(samples, 0.99)}


def describe(work_dir: Path) -> Machine:
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 0,
        memory=_memory(),
        disk=_disk(work_dir),
        kernel=f"{platform.system()} {platform.release()}",
        python=f"{platform.python_implementation()} {sys.version.split()[0]}",
        virtualisation=_virtualisation(),
        fsync_ms=fsync_probe(work_dir / "fsync-probe"),
    )
