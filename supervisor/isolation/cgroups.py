"""A served model's cgroups on the process runtime: its memory, CPU and process limits, and its
out-of-memory kills.

One cgroup per model and controller, made below the supervisor's own cgroup
(``<mount>/<own path>/modelserve-<instance>/<model id>``), so the limits hold for the model host
and every scoring server it forks together, whatever they do (a fork bomb stays inside
``pids.max``, a leak inside the memory limit, a spinning loop inside its CPU quota). The box's
first process joins them itself before it executes bubblewrap (``enter.py``), so nothing of the
model ever runs outside them. The kernel's own count of OOM kills in the memory cgroup is how
the runtime tells "killed for its memory limit" from any other SIGKILL.

cgroup v1 (one hierarchy per controller, as on these machines) and v2 (one unified hierarchy,
controllers enabled in the parent's ``cgroup.subtree_control``) are both handled; which one
applies, and whether this process may write it, is what ``capabilities.py`` reports.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from supervisor.isolation.box import Box

ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000
CONTROLLERS = ("memory", "cpu", "pids")


@dataclass(frozen=True)
class ModelCgroups:
    """The cgroup directories of one model (one per controller on v1, one in all on v2)."""

    version: int
    dirs: tuple[Path, ...]

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def oom_kills(self) -> int:
        """How many processes the kernel killed for this model's memory limit, so far."""
        memory = self.dirs[0]
        name, key = ("memory.oom_control", "oom_kill") if self.version == 1 else ("memory.events", "oom_kill")
        try:
            for line in (memory / name).read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == key:
                    return int(parts[1])
        except (OSError, ValueError):
            pass
        return 0

    def pids(self) -> list[int]:
        out: set[int] = set()
        for f in self.procs_files:
            with contextlib.suppress(OSError, ValueError):
                out |= {int(p) for p in f.read_text().split()}
        return sorted(out)


def _own_paths(root: Path) -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path in it."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            for controller in parts[1].split(",") if parts[1] else [""]:
                out[controller] = parts[2]
    return out


def _version(root: Path) -> int | None:
    if (root / "cgroup.controllers").is_file():
        return 2
    if all((root / c).is_dir() for c in CONTROLLERS):
        return 1
    return None


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def locate(instance: str, model_id: str, root: Path = ROOT) -> ModelCgroups | None:
    """Where this model's cgroups are (or would be); None when this machine has no usable cgroups."""
    version = _version(root)
    own = _own_paths(root)
    group = Path(f"modelserve-{instance}") / model_id
    if version == 1:
        return ModelCgroups(1, tuple(root / c / own.get(c, "/").lstrip("/") / group for c in CONTROLLERS))
    if version == 2:
        return ModelCgroups(2, (root / own.get("", "/").lstrip("/") / group,))
    return None


def prepare(cgroups: ModelCgroups, box: Box) -> None:
    """Makes the model's cgroups and sets the box's limits on them (OSError when not allowed)."""
    quota = max(1000, int(box.cpus * CPU_PERIOD_US))
    if cgroups.version == 1:
        memory, cpu, pids = cgroups.dirs
        for d in cgroups.dirs:
            d.mkdir(parents=True, exist_ok=True)
        _write(memory / "memory.limit_in_bytes", str(box.memory_bytes))
        with contextlib.suppress(OSError):  # only with swap accounting: swap must not extend the limit
            _write(memory / "memory.memsw.limit_in_bytes", str(box.memory_bytes))
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(quota))
        _write(pids / "pids.max", str(box.pids))
        return
    (d,) = cgroups.dirs
    for parent in reversed([d.parent, d.parent.parent]):
        parent.mkdir(exist_ok=True)
        _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in CONTROLLERS))
    d.mkdir(exist_ok=True)
    _write(d / "memory.max", str(box.memory_bytes))
    with contextlib.suppress(OSError):
        _write(d / "memory.swap.max", "0")
    _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
    _write(d / "pids.max", str(box.pids))


def remove(cgroups: ModelCgroups) -> None:
    """Removes the model's cgroups once nothing runs in them (rmdir fails while something does)."""
    for d in cgroups.dirs:
        with contextlib.suppress(OSError):
            os.rmdir(d)
