"""The process runtime: one detached local box per model, found again from files on disk.

A model's box is started in its own session (``start_new_session``), not as a lasting child of
the supervisor, so restarting the API or the reconciler never stops serving. Its first process
is the keeper (``host/keeper.py``), which keeps the model host running, which keeps one scoring
server per version running (unboxed, the host is the first process). Everything needed to find it again lives in the model's dir
(``host.json`` with the box's pid and what it was started with, ``spec/spec.json``), so a new
supervisor adopts running boxes by reading files. A pid counts as our box only if /proc shows it
alive (not a zombie) running the keeper for that state dir, which guards against pid reuse.

**The box** (``settings.sandbox = "bwrap"``, the default): ``isolation/enter.py`` joins the
model's cgroups (as root: memory, CPU and process limits), then bubblewrap builds the namespaces
and mounts (``isolation/sandbox.py``) and, as root, ``setpriv`` drops to the model's own uid. The
model sees its environments, model files, the host's code and its spec read-only, and writes
only ``box/`` (its status and logs) and its socket directory, both owned by its uid (mode 0700).
The supervisor never writes into those two and reads what is there as untrusted input
(``isolation/boxfiles.py``, ``runtime/hoststatus.py``). Pids in the status are the box's own
(its PID namespace), so they are translated before anything outside uses them.

``sandbox = "off"`` runs the same keeper and host unconfined, for local play only (``up`` and the
health check say so). Scoring servers then outlive a killed keeper (each leads its own process
group) and the new host adopts them; stopping a model signals their groups too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from supervisor import naming
from supervisor.auth.bootstrap import without_secrets
from supervisor.capture.spool import spool_folder, spool_path
from supervisor.envs import EnvBuilder, EnvSpec, interpreter_prefix
from supervisor.host.modelhost import cmdline, process_groups, serves_from
from supervisor.isolation import boxfiles, cgroups, netguard, pidns, sandbox
from supervisor.isolation.box import Box, MiB
from supervisor.isolation.buildbox import BuildBox
from supervisor.runtime import hoststatus, sockets
from supervisor.runtime.base import HostState, VersionLaunch
from supervisor.runtime.statefiles import read_json, write_json
from supervisor.settings import Settings

PACKAGE_DIR = Path(__file__).resolve().parents[1]
KEEPER = PACKAGE_DIR / "host" / "keeper.py"
MODELHOST = PACKAGE_DIR / "host" / "modelhost.py"
SCORING_SERVER = PACKAGE_DIR / "scoring" / "server.py"
ENTER = PACKAGE_DIR / "isolation" / "enter.py"
STOP_WAIT = 15.0


def host_is_alive(pid: int, state_dir: Path) -> bool:
    """Whether ``pid`` is the live first process of the box whose state dir is ``state_dir``."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own dead child
    except ChildProcessError:
        pass
    args = cmdline(pid)
    return (args is not None and any(a.endswith(("keeper.py", "modelhost.py")) for a in args)
            and str(state_dir) in args)


def box_key(box: Box) -> str:
    return hashlib.sha256(repr(box).encode()).hexdigest()[:16]


class ProcessRuntime:
    name = "process"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.envs = EnvBuilder(settings)
        self.instance = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:8]

    @property
    def sandboxed(self) -> bool:
        return self.settings.sandbox != "off"

    def env_ready(self, spec: EnvSpec) -> bool:
        return self.envs.is_built(spec)

    def build_env(self, spec: EnvSpec, log_path: Path, box: Box, progress: Callable[[str], None] | None = None
                  ) -> Path:
        confine = None
        if self.sandboxed:
            uv = Path(self.envs.uv_binary(log_path))
            confine = BuildBox(box, root=os.geteuid() == 0, uv=uv, bwrap=shutil.which("bwrap") or "bwrap")
        return self.envs.build(spec, log_path, progress=progress, confine=confine)

    # --- where things are ----------------------------------------------------------------
    def model_dir(self, model: str) -> Path:
        """The supervisor's own dir for the model (host.json, spec/); never writable by the box."""
        return (self.settings.hosts_dir / naming.model_id(model)).resolve()

    def state_dir(self, model: str) -> Path:
        """What the box writes: status.json, keeper.json, versions/<v>.log and handoff dirs."""
        return self.model_dir(model) / "box"

    def spec_path(self, model: str) -> Path:
        return self.model_dir(model) / "spec" / "spec.json"

    def socket_dir(self, model: str) -> Path:
        return sockets.model_dir(self.settings.sockets_dir.resolve(), model)

    def socket_path(self, model: str, version: str) -> Path:
        return self.socket_dir(model) / sockets.socket_name(version)

    def spool_dir(self, model: str) -> Path:
        return spool_folder(self.settings.spool_dir.resolve(), model)

    def spool_path(self, model: str, version: str) -> Path:
        """A version's inference-table spool, in a folder of the model's own (the box writes it)."""
        return spool_path(self.settings.spool_dir.resolve(), model, version)

    def _version_log(self, model: str, version: str) -> Path:
        return self.state_dir(model) / "versions" / f"{version}.log"

    def cgroups(self, model: str) -> cgroups.ModelCgroups | None:
        """The model's cgroups when this supervisor may make them (root), else None."""
        if not self.sandboxed or os.geteuid() != 0:
            return None
        return cgroups.locate(self.instance, naming.model_id(model))

    def spec(self, model: str, versions: list[VersionLaunch]) -> dict[str, Any]:
        d = self.state_dir(model)
        return {
            "model": model,
            "versions": {
                v.version: {
                    "argv": [str(v.python), str(SCORING_SERVER), "--model-dir", str(Path(v.model_dir).resolve()),
                             "--socket", str(self.socket_path(model, v.version)),
                             "--workers", str(self.settings.scoring_workers),
                             "--batching", v.batching or self.settings.batching,
                             "--handoff-dir", str(d / "versions" / f"{v.version}.handoff"),
                             "--capture-spool", str(self.spool_path(model, v.version))],
                    "env": {"PYTHONUNBUFFERED": "1"},
                    "log": str(self._version_log(model, v.version)),
                    "liveness": {"socket": str(self.socket_path(model, v.version)),
                                 "seconds": self.settings.liveness_seconds},
                }
                for v in versions
            },
        }

    def _host_info(self, model: str) -> dict[str, Any]:
        return read_json(self.model_dir(model) / "host.json") or {}

    def _host_pid(self, model: str) -> int | None:
        pid = self._host_info(model).get("pid")
        return int(pid) if isinstance(pid, int) else None

    # --- apply ---------------------------------------------------------------------------
    def apply_host(self, model: str, versions: list[VersionLaunch], box: Box) -> None:
        m, d = self.model_dir(model), self.state_dir(model)
        m.mkdir(parents=True, exist_ok=True)
        os.chmod(m, 0o700)  # the supervisor's: no local user (nor any box) reads host.json or the spec
        write_json(self.spec_path(model), self.spec(model, versions))
        os.chmod(self.spec_path(model).parent, 0o755)
        os.chmod(self.spec_path(model), 0o644)
        pid = self._host_pid(model)
        if pid is not None and host_is_alive(pid, d):
            info = self._host_info(model)
            mounted = set(info.get("interpreters") or []) if info.get("sandboxed") else None
            needed = {str(interpreter_prefix(Path(v.python))) for v in versions}
            if info.get("box") == box_key(box) and (mounted is None or needed <= mounted):
                os.kill(pid if not info.get("sandboxed") else self._keeper(pid) or pid, signal.SIGHUP)
                return
            # A MANAGE user changed the box (limits and identity are fixed at start), or a new version
            # needs a Python installation the box does not have mounted: it starts anew.
            self.stop_host(model, forget=False)
        self._start(model, versions, box)

    def _box_dirs(self, model: str, box: Box) -> None:
        """The dirs the box writes (state, sockets, capture spools), owned by its uid and closed to
        everyone else. An earlier box may have left a symlink (or anything) in their place: that is
        removed first, never followed (chown through it would hand its target to the model). No
        box runs meanwhile."""
        for path in (self.state_dir(model), self.state_dir(model) / "versions", self.socket_dir(model),
                     self.spool_dir(model)):
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    path.unlink()
            path.mkdir(parents=True, exist_ok=True)
            if self.sandboxed and os.geteuid() == 0 and box.uid is not None and box.gid is not None:
                os.chown(path, box.uid, box.gid, follow_symlinks=False)
            os.chmod(path, 0o700)

    def _leftovers(self, model: str) -> list[int]:
        """Processes of an earlier box of this model that outlived its first process (bubblewrap's
        namespace init is its child and is not killed with it): found in the model's cgroups, and
        by a command line naming this model's state dir."""
        d, mine = str(self.state_dir(model)), os.getpid()
        found = set(groups.pids()) if (groups := self.cgroups(model)) is not None else set()
        for pid in process_groups().values():
            for p in pid:
                args = cmdline(p)
                if p != mine and args and d in args and any(a.endswith(("keeper.py", "modelhost.py")) for a in args):
                    found.add(p)
        return sorted(found)

    def _start(self, model: str, versions: list[VersionLaunch], box: Box) -> None:
        d = self.state_dir(model)
        for pid in self._leftovers(model):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self._box_dirs(model, box)
        args = ["--state-dir", str(d), "--spec", str(self.spec_path(model))]
        # Unboxed, the host itself (its servers outlive it and the next one adopts them); boxed, the
        # keeper first, which restarts a dead host inside the box, whose PID namespace ends with it.
        argv, env = [self._host_python(), str(MODELHOST), *args], without_secrets(os.environ)
        if self.sandboxed:
            argv = self._boxed(model, versions, box, [self._host_python(), str(KEEPER), *args])
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        with open(self.model_dir(model) / "host.log", "ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, cwd=str(d), env=env,
            )
        write_json(self.model_dir(model) / "host.json",
                   {"model": model, "pid": proc.pid, "started": time.time(), "box": box_key(box),
                    "sandboxed": self.sandboxed, "memory_bytes": box.memory_bytes,
                    "interpreters": sorted({str(Path(sys.base_prefix).resolve())}
                                           | {str(interpreter_prefix(Path(v.python))) for v in versions})})

    def _host_python(self) -> str:
        # The keeper and host are stdlib only: the bare interpreter, not the supervisor's venv.
        base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        return str(base if base.exists() else Path(sys.executable).resolve())

    def _boxed(self, model: str, versions: list[VersionLaunch], box: Box, keeper: list[str]) -> list[str]:
        root = os.geteuid() == 0
        if box.network:
            # It shares this machine's network namespace: without the loopback guard it would reach
            # the supervisor API, MLflow and every local listener. No guard, no network.
            problem = netguard.ensure(self.settings) if root else "the supervisor is not root"
            if problem:
                raise RuntimeError(f"network access cannot be confined here ({problem}); turn it off for this "
                                   "model or run the supervisor as root")
        # Mounts are fixed when the box starts, yet new versions join a running box (a restart
        # would disturb the versions serving): so the box gets this model's whole files dir and
        # the environments dir, each read-only. Environments are shared by content between models
        # and hold installed packages only (docs/SECURITY.md says what that shows).
        models = (self.settings.models_dir / naming.model_id(model)).resolve()
        envs = self.settings.envs_dir.resolve()
        for path in (models, envs):
            path.mkdir(parents=True, exist_ok=True)
        readonly = {Path(sys.base_prefix).resolve(), KEEPER.parent, SCORING_SERVER.parent,
                    self.spec_path(model).parent, models, envs}
        for v in versions:
            readonly.add(interpreter_prefix(Path(v.python)))
            for path in (Path(v.python).parent.parent.resolve(), Path(v.model_dir).resolve()):
                if path != models and models not in path.parents and envs not in path.parents:
                    readonly.add(path)  # a version from elsewhere (tests, a custom layout)
        argv = sandbox.command(box, root=root, readonly=sorted(readonly),
                               writable=[self.state_dir(model), self.socket_dir(model), self.spool_dir(model)],
                               workdir=self.state_dir(model), argv=keeper,
                               bwrap=shutil.which("bwrap") or "bwrap")
        groups = self.cgroups(model)
        joins: list[str] = []
        if groups is not None:
            cgroups.prepare(groups, box)
            joins = [a for f in groups.procs_files for a in ("--join", str(f))]
        return [self._host_python(), str(ENTER), *joins, "--", *argv]

    # --- stop ----------------------------------------------------------------------------
    def _keeper(self, box_pid: int) -> int | None:
        """The keeper's pid as this side sees it (bubblewrap's grandchild in the box's namespace)."""
        for pid in pidns.descendants(box_pid):
            args = cmdline(pid)
            if args and len(args) > 1 and args[1].endswith("keeper.py"):
                return pid
        return None

    def stop_host(self, model: str, forget: bool = True) -> None:
        d = self.state_dir(model)
        info = self._host_info(model)
        pid = self._host_pid(model)
        if pid is not None and host_is_alive(pid, d):
            target = (self._keeper(pid) if info.get("sandboxed") else pid) or pid
            with contextlib.suppress(OSError):
                os.kill(target, signal.SIGTERM)
            deadline = time.monotonic() + STOP_WAIT
            while time.monotonic() < deadline and host_is_alive(pid, d):
                time.sleep(0.1)
            if host_is_alive(pid, d):
                # The whole box: its PID namespace ends with its first process inside, and the
                # unboxed form leads its own process group.
                for victim in [*pidns.descendants(pid)[:1], pid]:
                    with contextlib.suppress(OSError):
                        os.kill(victim, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
        if not info.get("sandboxed"):
            self._stop_leftover_servers(d)
        groups = self.cgroups(model)
        if groups is not None:
            for leftover in groups.pids():
                with contextlib.suppress(OSError):
                    os.kill(leftover, signal.SIGKILL)
        if forget:
            shutil.rmtree(self.model_dir(model), ignore_errors=True)
            shutil.rmtree(self.socket_dir(model), ignore_errors=True)
            shutil.rmtree(sockets.published_path(self.settings.sockets_dir.resolve(), self.socket_dir(model)),
                          ignore_errors=True)
            if groups is not None:
                deadline = time.monotonic() + 5
                while groups.pids() and time.monotonic() < deadline:
                    time.sleep(0.05)
                cgroups.remove(groups)

    def _stop_leftover_servers(self, d: Path) -> None:
        """Unboxed only: servers outlive a killed host, and whatever the host did not stop is
        stopped here. Only groups that still hold a scoring server of this state dir are
        signalled (a group id is never reused while it has members)."""
        status = boxfiles.read_record(d, "status.json") or {}
        raw = status.get("versions")
        candidates: list[int] = []
        for v in (raw.values() if isinstance(raw, dict) else []):
            if isinstance(v, dict):
                candidates += [g for g in [v.get("pid"), *(v.get("old_groups") or [])]
                               if isinstance(g, int) and g > 1]
        live = process_groups()
        for group in candidates:
            if any(serves_from(member, d) for member in live.get(group, [])):
                with contextlib.suppress(OSError):
                    os.killpg(group, signal.SIGKILL)

    # --- state ---------------------------------------------------------------------------
    def wanted_versions(self, model: str) -> list[str]:
        spec = read_json(self.spec_path(model)) or {}
        return [str(v) for v in (spec.get("versions") or {})]

    def host_state(self, model: str) -> HostState | None:
        d = self.state_dir(model)
        info = self._host_info(model)
        pid = self._host_pid(model)
        if pid is None:
            return None
        alive = host_is_alive(pid, d)
        record = boxfiles.read_record(d, "status.json")
        entries = hoststatus.versions_of(record, self.wanted_versions(model))
        if info.get("sandboxed"):
            # Box pids are the box's own; outside they are found through its PID namespace. A dead
            # box took every process with it.
            outside = pidns.outside_pids(pid) if alive else {}
            for e in entries.values():
                e["pid"] = outside.get(e["pid"]) if e["pid"] is not None else None
            versions = hoststatus.processes(entries, running=lambda e: alive and e["state"] == "running")
        else:
            # A dead host's servers may well be serving still: judged by their own processes.
            versions = hoststatus.processes(
                entries, running=lambda e: (e["state"] == "running") if alive
                else e["pid"] is not None and serves_from(e["pid"], d))
        keeper = boxfiles.read_record(d, "keeper.json") or {}
        restarts = keeper.get("restarts")
        groups = self.cgroups(model)
        memory = info.get("memory_bytes")
        return HostState(
            model=model, alive=alive, pid=pid, versions=versions,
            reason=None if alive else f"model host process {pid} is not running",
            host_restarts=restarts if isinstance(restarts, int) and 0 <= restarts < 1 << 30 else 0,
            host_last_exit=hoststatus._text(keeper.get("last_exit")),
            oom_kills=groups.oom_kills() if groups is not None else 0,
            memory_limit_mib=memory // MiB if isinstance(memory, int) else None,
        )

    def outside_pid(self, model: str, pid: int) -> int | None:
        """A pid from the box's status as this side sees it (the same pid when not boxed)."""
        box = self._host_pid(model)
        if box is None or not self._host_info(model).get("sandboxed"):
            return pid
        return pidns.outside_pids(box).get(pid)

    def hosts(self) -> list[str]:
        out = []
        for info_path in sorted(self.settings.hosts_dir.glob("*/host.json")):
            info = read_json(info_path)
            if info and isinstance(info.get("model"), str):
                out.append(info["model"])
        return out

    def address(self, model: str, version: str) -> str:
        # The box's own path is the box's to change: the gateway gets a verified link of it.
        source = self.socket_path(model, version)
        published = sockets.published_path(self.settings.sockets_dir.resolve(), source)
        sockets.publish(source, published)
        return sockets.upstream(published)

    def routes_applied(self, addresses: Iterable[str]) -> None:
        """A version keeps its socket across host changes: nothing is ever left to retire."""

    def version_log(self, model: str, version: str, max_bytes: int = 200_000) -> str:
        return boxfiles.tail(self.state_dir(model), f"versions/{version}.log", max_bytes)

