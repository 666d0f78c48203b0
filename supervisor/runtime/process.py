"""The process runtime: one detached local model host per model, found again from files on disk.

A model host is started in its own session (``start_new_session``), not as a lasting child of
the supervisor, so restarting the API or the reconciler never stops serving. Everything needed
to find it again lives in its state dir (``host.json`` with its pid, ``spec.json``,
``status.json``, the version logs), so a new supervisor adopts running hosts by reading files.
A pid counts as our host only if /proc shows it alive (not a zombie) running modelhost.py for
that state dir, which guards against pid reuse after a reboot or a crash.

Scoring servers outlive a killed host (each leads its own process group), so while a host is
dead its versions still count as running when their servers do, and the new host adopts them:
a killed host costs no request. Stopping a model therefore signals the servers' groups too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from supervisor import naming
from supervisor.auth.bootstrap import without_secrets
from supervisor.envs import EnvBuilder, EnvSpec
from supervisor.host.modelhost import cmdline, process_groups, serves_from
from supervisor.isolation.box import Box
from supervisor.runtime import sockets
from supervisor.runtime.base import HostState, VersionLaunch, VersionProcess
from supervisor.runtime.statefiles import read_json, tail_text, write_json
from supervisor.settings import Settings

PACKAGE_DIR = Path(__file__).resolve().parents[1]
MODELHOST = PACKAGE_DIR / "host" / "modelhost.py"
SCORING_SERVER = PACKAGE_DIR / "scoring" / "server.py"


def host_is_alive(pid: int, state_dir: Path) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own dead child
    except ChildProcessError:
        pass
    args = cmdline(pid)
    return args is not None and any(a.endswith("modelhost.py") for a in args) and str(state_dir) in args


class ProcessRuntime:
    name = "process"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.envs = EnvBuilder(settings)

    def env_ready(self, spec: EnvSpec) -> bool:
        return self.envs.is_built(spec)

    def build_env(self, spec: EnvSpec, log_path: Path, progress: Callable[[str], None] | None = None) -> Path:
        return self.envs.build(spec, log_path, progress=progress)

    def state_dir(self, model: str) -> Path:
        return self.settings.hosts_dir / naming.model_id(model)

    def socket_dir(self, model: str) -> Path:
        return sockets.model_dir(self.settings.sockets_dir, model)

    def socket_path(self, model: str, version: str) -> Path:
        return self.socket_dir(model) / sockets.socket_name(version)

    def _version_log(self, model: str, version: str) -> Path:
        return self.state_dir(model) / "versions" / f"{version}.log"

    def spec(self, model: str, versions: list[VersionLaunch]) -> dict[str, Any]:
        return {
            "model": model,
            "versions": {
                v.version: {
                    "argv": [str(v.python), str(SCORING_SERVER), "--model-dir", str(v.model_dir),
                             "--socket", str(self.socket_path(model, v.version)),
                             "--workers", str(self.settings.scoring_workers),
                             "--batching", v.batching or self.settings.batching,
                             "--handoff-dir", str(self.state_dir(model) / "versions" / f"{v.version}.handoff")],
                    "env": {"PYTHONUNBUFFERED": "1"},
                    "log": str(self._version_log(model, v.version)),
                    "liveness": {"socket": str(self.socket_path(model, v.version)),
                                 "seconds": self.settings.liveness_seconds},
                }
                for v in versions
            },
        }

    def _host_pid(self, model: str) -> int | None:
        info = read_json(self.state_dir(model) / "host.json")
        pid = info.get("pid") if info else None
        return int(pid) if isinstance(pid, int) else None

    def apply_host(self, model: str, versions: list[VersionLaunch], box: Box) -> None:
        d = self.state_dir(model)
        (d / "versions").mkdir(parents=True, exist_ok=True)
        self.socket_dir(model).mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json(d / "spec.json", self.spec(model, versions))
        pid = self._host_pid(model)
        if pid is not None and host_is_alive(pid, d):
            os.kill(pid, signal.SIGHUP)
            return
        self._start(model, d)

    def _start(self, model: str, d: Path) -> None:
        # status.json stays: it is how the new host finds the servers a killed one left running.
        with open(d / "host.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, str(MODELHOST), "--state-dir", str(d)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, cwd=str(d),
                # A model's own code runs under this host: it must not inherit the admin's credentials.
                env=without_secrets(os.environ),
            )
        write_json(d / "host.json", {"model": model, "pid": proc.pid, "started": time.time()})

    def _server_alive(self, d: Path, pid: object) -> bool:
        """Whether ``pid`` is a live scoring server of this host (the status file names it; /proc
        confirms it runs the scoring server for this state dir)."""
        return isinstance(pid, int) and pid > 1 and serves_from(pid, d)

    def _server_groups(self, d: Path) -> list[int]:
        """Process groups of the scoring servers the host's status names, current and retiring."""
        status = read_json(d / "status.json") or {}
        groups: list[int] = []
        for v in (status.get("versions") or {}).values():
            if isinstance(v, dict):
                groups += [g for g in [v.get("pid"), *(v.get("old_groups") or [])] if isinstance(g, int) and g > 1]
        return groups

    def stop_host(self, model: str) -> None:
        d = self.state_dir(model)
        pid = self._host_pid(model)
        if pid is not None and host_is_alive(pid, d):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and host_is_alive(pid, d):
                time.sleep(0.1)
            if host_is_alive(pid, d):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
        # Servers outlive a killed host: whatever the host did not stop is stopped here, and only
        # groups that still hold a scoring server are signalled (a group id is never reused while
        # it has members).
        live = process_groups()
        for group in self._server_groups(d):
            if any(self._server_alive(d, member) for member in live.get(group, [])):
                try:
                    os.killpg(group, signal.SIGKILL)
                except OSError:
                    pass
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.socket_dir(model), ignore_errors=True)

    def host_state(self, model: str) -> HostState | None:
        d = self.state_dir(model)
        pid = self._host_pid(model)
        if pid is None:
            return None
        alive = host_is_alive(pid, d)
        status = read_json(d / "status.json") or {}
        versions = {}
        for version, v in (status.get("versions") or {}).items():
            if not isinstance(v, dict):
                continue
            # A dead host's servers may well be serving still: judged by their own processes.
            running = (v.get("state") == "running") if alive else self._server_alive(d, v.get("pid"))
            versions[str(version)] = VersionProcess(
                version=str(version),
                running=running,
                pid=v.get("pid"),
                restarts=int(v.get("restarts") or 0),
                last_exit=v.get("last_exit"),
            )
        reason = None if alive else f"model host process {pid} is not running"
        return HostState(model=model, alive=alive, pid=pid, versions=versions, reason=reason)

    def hosts(self) -> list[str]:
        out = []
        for info_path in sorted(self.settings.hosts_dir.glob("*/host.json")):
            info = read_json(info_path)
            if info and isinstance(info.get("model"), str):
                out.append(info["model"])
        return out

    def address(self, model: str, version: str) -> str:
        return sockets.upstream(self.socket_path(model, version))

    def routes_applied(self, addresses: Iterable[str]) -> None:
        """A version keeps its port across host changes: nothing is ever left to retire."""

    def version_log(self, model: str, version: str, max_bytes: int = 200_000) -> str:
        path = self._version_log(model, version)
        return tail_text(path, max_bytes)
