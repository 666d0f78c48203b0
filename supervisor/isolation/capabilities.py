"""What this machine lets the supervisor enforce of a model's box, found out and said plainly.

A box the host cannot enforce must be reported, never skipped silently (ARCHITECTURE.md, "Trust
boundaries"), so this module looks before anything relies on it: is the supervisor root (a uid
per model), does bubblewrap work (namespaces: identity, files, network), are user namespaces
usable, and which cgroup controllers (memory, cpu, pids) may this process write. Only harmless
probes: files are read, never written, and the two commands run (``bwrap ... true`` and
``unshare --user true``) change nothing. Every place it looks is a parameter (``Probes``), so the
tests hand it a fake ``/proc`` and ``/sys/fs/cgroup``; the answer is cached per process
(``machine_capabilities``), since the probes fork.

It says what the machine allows, not what the runtime did: the runtime applies the box, and this
report is what an operator reads to know which parts of it can hold here.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROBE_TIMEOUT = 5.0
LIMITS = ("memory", "cpu", "pids")
_NOT_ENFORCED_ELSE = {
    "memory": "only a per-process RLIMIT_AS can bound memory",
    "cpu": "nothing bounds a model's share of the CPUs",
    "pids": "only RLIMIT_NPROC, which counts every process of the user, can bound processes",
}
_LIMIT_NAMES = {"memory": "memory limits", "cpu": "CPU limits", "pids": "process limits"}


@dataclass(frozen=True)
class Capability:
    what: str  # identity, sandbox, user_namespaces, network, memory, cpu, pids
    enforced: bool
    detail: str  # one plain sentence, shown as it is by `modelserve up` and the health check

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "enforced": self.enforced, "detail": self.detail}


@dataclass(frozen=True)
class Capabilities:
    items: tuple[Capability, ...]

    def not_enforced(self) -> list[Capability]:
        return [c for c in self.items if not c.enforced]

    def to_json(self) -> dict[str, Any]:
        return {"all_enforced": not self.not_enforced(), "items": [c.to_json() for c in self.items]}


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return -1, f"no answer within {timeout:g} s"
    except OSError as exc:
        return -1, str(exc)
    return done.returncode, (done.stderr or done.stdout).decode(errors="replace").strip()


def _writable(path: Path) -> bool:
    # os.access also answers False for a read-only mount (a container's /sys/fs/cgroup).
    return os.access(path, os.W_OK)


@dataclass(frozen=True)
class Probes:
    """Where to look and how to ask; the defaults are this machine."""

    proc: Path = Path("/proc")
    cgroup_root: Path = Path("/sys/fs/cgroup")
    euid: Callable[[], int] = os.geteuid
    which: Callable[[str], str | None] = shutil.which
    run: Callable[[list[str], float], tuple[int, str]] = _run
    writable: Callable[[Path], bool] = field(default=_writable)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _first_line(text: str) -> str:
    return (text.splitlines() or ["no reason given"])[0][:200]


# --- namespaces ------------------------------------------------------------------------------
def _bwrap(sandbox: str, p: Probes) -> Capability:
    if sandbox == "off":
        return Capability("sandbox", False, "sandbox NOT used: MODELSERVE_SANDBOX=off runs model code unconfined "
                                            "(for local play only)")
    path = p.which("bwrap")
    if path is None:
        return Capability("sandbox", False, "sandbox NOT available: bubblewrap (bwrap) is not installed; install "
                                            "the bubblewrap package")
    rc, out = p.run([path, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"], PROBE_TIMEOUT)
    if rc != 0:
        return Capability("sandbox", False, f"sandbox NOT available: bwrap is installed but cannot make its "
                                            f"namespaces here ({_first_line(out)})")
    return Capability("sandbox", True, "sandbox: bubblewrap works here (its own mount, PID, network and IPC "
                                       "namespaces for each model)")


def _user_namespaces(root: bool, sandboxed: bool, p: Probes) -> Capability:
    sysctl = p.proc / "sys"
    if _read(sysctl / "user" / "max_user_namespaces") == "0":
        return Capability("user_namespaces", False, "user namespaces NOT usable: user.max_user_namespaces is 0")
    if not root and _read(sysctl / "kernel" / "unprivileged_userns_clone") == "0":
        return Capability("user_namespaces", False, "user namespaces NOT usable by this user: "
                                                    "kernel.unprivileged_userns_clone is 0")
    unshare = p.which("unshare")
    if unshare is not None:
        rc, out = p.run([unshare, "--user", "true"], PROBE_TIMEOUT)
        if rc != 0:
            return Capability("user_namespaces", False, f"user namespaces NOT usable by this user "
                                                        f"({_first_line(out)})")
        return Capability("user_namespaces", True, "user namespaces: usable by this user")
    if sandboxed:
        return Capability("user_namespaces", True, "user namespaces: usable (bubblewrap made one)")
    return Capability("user_namespaces", False, "user namespaces: not known to work (no unshare command to try, "
                                                "and no working bubblewrap)")


def _identity(root: bool, sandboxed: bool) -> Capability:
    if root:
        return Capability("identity", True, "identity: each model can run as its own uid (the supervisor is "
                                            "root; MODELSERVE_MODEL_UID_START..END)")
    if sandboxed:
        return Capability("identity", True, "identity: no uid of its own (the supervisor is not root); each model "
                                            "runs as the supervisor's user inside its own sandbox")
    return Capability("identity", False, "identity NOT separate: the supervisor is not root and has no working "
                                         "sandbox, so model code runs as the supervisor's own user")


def _network(sandboxed: bool, root: bool = True) -> Capability:
    if sandboxed:
        granted = ("a model given network access shares this machine's network, kept off its loopback except the "
                   "gateway by iptables owner rules" if root else
                   "network access cannot be granted to a model here (keeping it off the loopback needs root)")
        return Capability("network", True, "network: a model without network access gets an empty network "
                                           f"namespace of its own (bubblewrap); {granted}")
    return Capability("network", False, "network NOT isolated: without a working sandbox model code shares this "
                                        "machine's network")


# --- cgroups ---------------------------------------------------------------------------------
def _own_cgroups(p: Probes) -> list[tuple[list[str], str]]:
    """(controllers, path) of each line of /proc/self/cgroup; v2's line has no controllers."""
    out = []
    for line in (_read(p.proc / "self" / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append(([c for c in parts[1].split(",") if c], parts[2]))
    return out


def _below(mount: Path, path: str) -> Path:
    # Without a cgroup namespace the path is the host's, which a container may not have mounted.
    inside = mount / path.lstrip("/")
    return inside if inside.is_dir() else mount


def cgroup_version(p: Probes) -> int | None:
    if (p.cgroup_root / "cgroup.controllers").is_file():
        return 2
    if any((p.cgroup_root / c).is_dir() for c in LIMITS):
        return 1
    return None


def _limit_v2(controller: str, p: Probes) -> Capability:
    name = _LIMIT_NAMES[controller]
    path = next((path for ctrls, path in _own_cgroups(p) if not ctrls), "/")
    own = _below(p.cgroup_root, path)
    available = (_read(own / "cgroup.controllers") or "").split()
    if controller not in available:
        why = f"cgroup v2 offers no {controller} controller to this process's cgroup ({path})"
    elif not (p.writable(own) and p.writable(own / "cgroup.subtree_control")):
        why = f"the cgroup v2 {controller} controller is not delegated to this user ({own} is not writable)"
    else:
        return Capability(controller, True, f"{name}: cgroup v2 {controller} controller, delegated to {own}")
    return Capability(controller, False, f"{name} NOT enforced: {why}; {_NOT_ENFORCED_ELSE[controller]}")


def _limit_v1(controller: str, p: Probes) -> Capability:
    name = _LIMIT_NAMES[controller]
    why = f"this process is in no cgroup v1 {controller} hierarchy"
    for ctrls, path in _own_cgroups(p):
        if controller not in ctrls:
            continue
        mount = p.cgroup_root / controller
        if not mount.is_dir():  # a joint hierarchy without its alias link, e.g. cpu,cpuacct
            mount = p.cgroup_root / ",".join(ctrls)
        if not mount.is_dir():
            why = f"the cgroup v1 {controller} hierarchy is not mounted under {p.cgroup_root}"
            break
        own = _below(mount, path)
        if p.writable(own):
            return Capability(controller, True, f"{name}: cgroup v1 {controller} controller ({own} writable)")
        why = f"no cgroup {controller} controller writable by this user ({own} is not)"
        break
    return Capability(controller, False, f"{name} NOT enforced: {why}; {_NOT_ENFORCED_ELSE[controller]}")


def _limits(p: Probes) -> list[Capability]:
    version = cgroup_version(p)
    if version == 2:
        return [_limit_v2(c, p) for c in LIMITS]
    if version == 1:
        return [_limit_v1(c, p) for c in LIMITS]
    return [Capability(c, False, f"{_LIMIT_NAMES[c]} NOT enforced: no cgroup file system at {p.cgroup_root}; "
                                 f"{_NOT_ENFORCED_ELSE[c]}") for c in LIMITS]


# --- all of it -------------------------------------------------------------------------------
def probe(sandbox: str, p: Probes | None = None) -> Capabilities:
    p = p or Probes()
    root = p.euid() == 0
    sandbox_item = _bwrap(sandbox, p)
    sandboxed = sandbox_item.enforced
    return Capabilities((
        _identity(root, sandboxed),
        sandbox_item,
        _user_namespaces(root, sandboxed, p),
        _network(sandboxed, root),
        *_limits(p),
    ))


@functools.lru_cache(maxsize=4)
def machine_capabilities(sandbox: str) -> Capabilities:
    """This machine's answer for this process (probed once: it forks)."""
    return probe(sandbox)


# --- the docker runtime ----------------------------------------------------------------------
_DOCKER_LIMITS = {"memory": ("MemoryLimit", "SwapLimit"), "cpu": ("CpuCfsQuota",), "pids": ("PidsLimit",)}


def docker_probe(info: dict[str, Any] | None, error: str = "", root: bool = True) -> Capabilities:
    """The docker runtime's box is the container, so the engine, not this machine's bubblewrap
    or cgroups, decides what holds: ``info`` is its ``docker info`` (None when it did not answer,
    with ``error`` saying why); its limit flags say which cgroup controllers it can apply."""
    who = ("each model's container runs as its own uid (MODELSERVE_MODEL_UID_START..END), never root" if root else
           "each model's container runs as the supervisor's own unprivileged uid, never root")
    items = [Capability("identity", True, f"identity: {who}")]
    if info is None:
        down = f"the Docker engine did not answer ({_first_line(error)})"
        items.append(Capability("sandbox", False, f"sandbox NOT known: {down}"))
        items.append(Capability("user_namespaces", False, f"user namespaces NOT known: {down}"))
        items.append(Capability("network", False, f"network NOT known: {down}"))
        items += [Capability(c, False, f"{_LIMIT_NAMES[c]} NOT known: {down}") for c in LIMITS]
        return Capabilities(tuple(items))
    items.append(Capability("sandbox", True, "sandbox: a Docker container per model (every capability dropped, "
                                             "no-new-privileges, read-only root, size-capped tmpfs /tmp)"))
    items.append(Capability("user_namespaces", True, "user namespaces: not needed, the engine makes each "
                                                     "container's namespaces and it never runs as root"))
    items.append(Capability("network", True, "network: none for a model's container (its own loopback only); a "
                                             "model given network access gets the engine's default bridge, never "
                                             "the host's network"))
    version, driver = info.get("CgroupVersion", "1"), info.get("CgroupDriver", "cgroupfs")
    for controller in LIMITS:
        flags = _DOCKER_LIMITS[controller]
        missing = [f for f in flags if info.get(f) is not True]
        name = _LIMIT_NAMES[controller]
        if missing:
            items.append(Capability(controller, False, f"{name} NOT enforced: the Docker engine reports "
                                                       f"{', '.join(missing)} unsupported on this kernel"))
        else:
            items.append(Capability(controller, True, f"{name}: the Docker engine's cgroup v{version} "
                                                      f"{controller} controller ({driver} driver)"))
    return Capabilities(tuple(items))


_docker_answer: Capabilities | None = None


def runtime_capabilities(runtime: str, sandbox: str, docker_info: Callable[[], dict[str, Any]]) -> Capabilities:
    """What the configured runtime can hold here. The engine's answer is kept once it came (an
    engine that was not up yet is asked again next time)."""
    global _docker_answer
    if runtime not in ("docker", "swarm"):
        return machine_capabilities(sandbox)
    if _docker_answer is None:
        try:
            info = docker_info()
        except Exception as exc:  # the SDK raises its own and requests' errors alike
            return docker_probe(None, str(exc), os.geteuid() == 0)
        _docker_answer = docker_probe(info, root=os.geteuid() == 0)
    return _docker_answer
