"""The faults the churn suite causes, each aimed only at processes of the system it started.

Every pid comes from that system's own files (``run/up.json``, the hosts' ``host.json``,
``status.json`` and ``active.json``), from /proc below such a pid (a server's workers), or, for an
environment build, from /proc filtered by that system's data dir, so a fault can never reach another system on the machine (other tests and
helpers run theirs beside it). Supervisor processes lead their own process groups, so a group
signal takes gunicorn's or MLflow's workers with them, as a crash of the whole service would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from supervisor import naming
from supervisor.gateway import Gateway
from supervisor.isolation import pidns
from supervisor.runtime.process import ProcessRuntime
from supervisor.settings import Settings
from tests.e2e.conftest import System


def children(system: System) -> dict[str, int]:
    """The launcher's children (mlflow, reconciler, api) by name -> pid (each leads its group)."""
    up = json.loads((system.data_dir / "run" / "up.json").read_text())
    return {k: int(v) for k, v in up["children"].items()}


def restart_child(system: System, name: str, sig: int, timeout: float = 60.0) -> float:
    """Signal a supervisor process's group and wait until the launcher has started it again
    (and, for the API, until it answers). Returns the seconds that took."""
    before = children(system)[name]
    log = system.data_dir / "logs" / "reconciler.log"
    runs = log.read_text(errors="replace").count("reconciler running")
    t0 = time.monotonic()
    os.killpg(before, sig)
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        now = children(system).get(name)
        if now and now != before and _pid_alive(now):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the launcher did not restart {name} within {timeout:.0f} s")
    if name == "api":
        system.wait_for("the API after its restart",
                        lambda: system.api("GET", "list").status_code == 200, timeout=timeout, every=0.2)
    if name == "reconciler":
        system.wait_for("the new reconciler running", lambda: log.read_text(errors="replace").count(
            "reconciler running") > runs, timeout=timeout, every=0.2)
    return time.monotonic() - t0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def registry_stopped(system: System) -> Iterator[None]:
    """The embedded MLflow server frozen (SIGSTOP to its group), then thawed (SIGCONT): the
    registry and MLflow's auth API accept connections and answer nothing, the worst kind of
    unreachable for a client (it must time out, not fail fast)."""
    group = children(system)["mlflow"]
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)


def reload_nginx(system: System) -> None:
    """``nginx -s reload`` of this system's gateway, returning once the new workers took over."""
    Gateway(Settings(data_dir=system.data_dir)).reload()


def _model_dir(system: System, model: str) -> Path:
    return system.data_dir / "hosts" / naming.model_id(model)


def status(system: System, model: str, runtime: str) -> dict[str, Any]:
    """The model host's status.json (in the active container's state dir on docker, in the box's
    on the process runtime); its pids are the box's own."""
    d = _model_dir(system, model)
    d = d / json.loads((d / "active.json").read_text())["name"] if runtime == "docker" else d / "box"
    return dict(json.loads((d / "status.json").read_text()))


def _in_container(system: System, model: str, command: str) -> str:
    """Runs ``command`` with the active container's sh (pids there are the container's own)."""
    cid = json.loads((_model_dir(system, model) / "active.json").read_text())["id"]
    done = subprocess.run(["docker", "exec", cid, "sh", "-c", command], check=True, timeout=60,
                          capture_output=True, text=True)
    return done.stdout


def _outside(system: System, model: str, pid: int) -> int:
    """A pid of the model's box (process runtime) as seen here, through its PID namespace."""
    found = ProcessRuntime(Settings(data_dir=system.data_dir)).outside_pid(model, pid)
    if found is None:
        raise AssertionError(f"process {pid} of {model}'s box is not running")
    return found


def _signal(system: System, model: str, runtime: str, pid: int, sig: int = signal.SIGKILL) -> None:
    if runtime == "docker":
        _in_container(system, model, f"kill -{int(sig)} {pid}")
    else:
        os.kill(_outside(system, model, pid), sig)


def workers(system: System, model: str, version: str, runtime: str) -> list[int]:
    """The forked workers of a version's scoring server, read from /proc (as the box numbers them)."""
    pid = int(status(system, model, runtime)["versions"][version]["pid"])
    try:
        if runtime == "docker":
            return [int(w) for w in _in_container(system, model, f"cat /proc/{pid}/task/{pid}/children").split()]
        outside = _outside(system, model, pid)
        mine = [int(w) for w in Path(f"/proc/{outside}/task/{outside}/children").read_text().split()]
    except (OSError, AssertionError, subprocess.CalledProcessError):
        return []
    return [inner for w in mine if (inner := pidns.inner_pid(w)) is not None]


def kill_worker(system: System, model: str, version: str, runtime: str) -> int:
    """SIGKILL one forked worker of a version's scoring server (its parent forks a new one)."""
    found = workers(system, model, version, runtime)
    if not found:
        raise AssertionError(f"version {version} of {model} has no worker to kill")
    _signal(system, model, runtime, found[0])
    return found[0]


def kill_version(system: System, model: str, version: str, runtime: str) -> None:
    """SIGKILL one version's scoring server, its parent process (its workers go on serving until
    the model host's replacement takes over)."""
    _signal(system, model, runtime, int(status(system, model, runtime)["versions"][version]["pid"]))


def kill_host(system: System, model: str, runtime: str) -> None:
    """SIGKILL the model's host process (its scoring servers go on serving), the one inside the
    box or container, which the box's keeper replaces."""
    _signal(system, model, runtime, int(status(system, model, runtime)["host_pid"]))


def kill_build(system: System, timeout: float) -> str:
    """SIGKILL the ``uv pip install`` of a new environment of this system (process runtime): the
    build killed midway. Returns its command line."""
    building = str(system.data_dir / "envs" / ".building-")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
            except OSError:
                continue
            # The install step (uv pip install --python <build dir>/bin/python): midway for real.
            if argv and Path(argv[0]).name == "uv" and "install" in argv and any(building in a for a in argv):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)
                    return " ".join(argv)
        time.sleep(0.05)
    raise AssertionError(f"no environment build of this system appeared within {timeout:.0f} s")
