"""Deploying one model version: download, environment, launch, health check.

Each step is idempotent (the download and the environment are cached, the port is kept in the
store, ``apply_host`` is declarative), so a deploy cut short by a restart is simply run again.
A deploy runs in a worker thread of the reconciler: a slow environment build never holds up the
other models. Whatever fails, fails this version only, with the reason in its state message and
the whole story in its build log.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from supervisor import naming
from supervisor.envs import EnvBuildError, EnvSpecError, read_env_spec
from supervisor.isolation.box import Box
from supervisor.isolation.boxes import box_for
from supervisor.registry import Registry, RegistryUnavailable, RegistryVersion
from supervisor.runtime import sockets
from supervisor.runtime.base import Runtime, VersionLaunch
from supervisor.runtime.statefiles import port_is_free
from supervisor.settings import Settings
from supervisor.store import FAILED, LAUNCHING, READY, VERSION_UPDATE, Deployment, Store

# Host restarts of one version before a deploy stops waiting for it and calls it failed.
MAX_START_RESTARTS = 2


class DeployAborted(Exception):
    """The version was removed (archived, disabled) while it was being deployed."""


def build_log_path(settings: Settings, model: str, version: str) -> Path:
    return settings.logs_dir / naming.model_id(model) / f"{version}.build.log"


# Launch options read from the registry at deploy time, kept beside the model's files so the
# host spec can be rebuilt at any later time without asking the registry again.
OPTIONS_FILE = ".modelserve-launch.json"


def write_launch_options(model_dir: Path, rv: RegistryVersion) -> None:
    (model_dir / OPTIONS_FILE).write_text(json.dumps({"batching": rv.batching}))


def read_launch_options(model_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((model_dir / OPTIONS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def launches(store: Store, model: str) -> list[VersionLaunch]:
    """What the model's host must run: every version that got as far as launching."""
    return [
        VersionLaunch(
            version=d.version,
            python=Path(d.python),
            model_dir=Path(d.model_dir),
            port=d.port,
            env_hash=d.env_hash or "",
            batching=read_launch_options(Path(d.model_dir)).get("batching", ""),
        )
        for d in store.deployments(model)
        if d.state in (LAUNCHING, READY) and d.python and d.model_dir and d.port
    ]




class Deployer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        runtime: Runtime,
        host_lock: Callable[[str], threading.Lock],
        wake: Callable[[], None],
        publish: Callable[[str, str, str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.runtime = runtime
        self.host_lock = host_lock
        self.wake = wake
        self.publish = publish or self._record

    def _log(self, path: Path, line: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with path.open("a", encoding="utf-8") as f:
            f.write(f"[{stamp}] {line}\n")

    def _still_wanted(self, model: str, version: str) -> Deployment:
        d = self.store.deployment(model, version)
        if d is None or not self.store.is_served(model):
            raise DeployAborted(f"version {version} of {model!r} is no longer wanted")
        return d

    def deploy(self, model: str, rv: RegistryVersion) -> None:
        version = rv.version
        log = build_log_path(self.settings, model, version)
        launched = False
        try:
            d = self._still_wanted(model, version)
            if d.state == LAUNCHING and d.python and d.model_dir and d.port:
                launched = True  # a restarted reconciler resumes at the health check
            else:
                # Before anything runs: a model that cannot have its box (no uid left) fails this
                # version with that reason, and builds and launches nothing either.
                box = box_for(self.store, self.settings, model)
                self._prepare(model, rv, log, box)
                launched = True
                with self.host_lock(model):
                    self._still_wanted(model, version)
                    self.runtime.apply_host(model, launches(self.store, model), box)
            self._wait_healthy(model, version, log)
            self._still_wanted(model, version)
            self.publish(model, version, READY, "")
            self.store.add_event(model, VERSION_UPDATE, f"Version {version} is ready and serving", version)
            self._log(log, "version is READY")
        except DeployAborted as exc:
            self._log(log, f"deploy aborted: {exc}")
        except RegistryUnavailable as exc:
            # Not the version's fault: it stays PENDING and the next tick tries again.
            self._log(log, f"model registry unreachable, will retry: {exc}")
            self.store.upsert_deployment(model, version, state_message=f"Waiting for the model registry: {exc}"[:500])
        except (EnvSpecError, EnvBuildError) as exc:
            self._fail(model, version, log, f"Environment build failed: {exc}", launched)
        except Exception as exc:
            self._fail(model, version, log, f"{type(exc).__name__}: {exc}", launched)
        finally:
            self.wake()

    def _record(self, model: str, version: str, state: str, message: str) -> None:
        self.store.upsert_deployment(model, version, state=state, state_message=message)

    def _prepare(self, model: str, rv: RegistryVersion, log: Path, box: Box) -> None:
        version = rv.version
        self._log(log, f"downloading the model artifacts of {model!r} version {version}")
        self.store.upsert_deployment(model, version, state_message="Downloading model artifacts")
        dest = self.settings.models_dir / naming.model_id(model) / version
        model_dir = self.registry.download(model, version, dest)
        write_launch_options(model_dir, rv)
        if rv.batching:
            self._log(log, f"micro-batching {rv.batching} (tag modelserve.batching)")
        spec = read_env_spec(model_dir)
        self._log(log, f"environment {spec.hash} from {spec.source}: python {spec.python}, "
                       f"{len(spec.requirements)} requirements")
        building = "Reusing environment" if self.runtime.env_ready(spec) else "Building environment"
        self.store.upsert_deployment(model, version, state_message=f"{building} {spec.hash}", env_hash=spec.hash)

        def progress(msg: str) -> None:
            self.store.upsert_deployment(model, version, state_message=f"Environment {spec.hash}: {msg}"[:500])

        python = self.runtime.build_env(spec, log, box, progress=progress)
        self._still_wanted(model, version)
        port = self.store.allocate_port(
            model, version, self.settings.port_range_start, self.settings.port_range_end, port_is_free
        )
        self.store.upsert_deployment(
            model,
            version,
            state=LAUNCHING,
            state_message="Starting the scoring server",
            python=str(python),
            model_dir=str(model_dir),
            port=port,
        )
        self.store.add_event(model, VERSION_UPDATE, f"Version {version} is launching its scoring server", version)
        self._log(log, "launching the scoring server")

    def _wait_healthy(self, model: str, version: str, log: Path) -> None:
        self._still_wanted(model, version)
        address = self.runtime.address(model, version)
        deadline = time.monotonic() + self.settings.health_timeout
        while time.monotonic() < deadline:
            # Asked again each time: the runtime publishes the socket for the gateway once the
            # server has bound it (runtime/sockets.py, publish), which it has not at first.
            address = self.runtime.address(model, version)
            if sockets.ping(address):
                self._log(log, f"health check passed: GET /ping on {address}")
                return
            state = self.runtime.host_state(model)
            proc = state.versions.get(version) if state else None
            if proc is not None and proc.restarts >= MAX_START_RESTARTS:
                tail = self.runtime.version_log(model, version, max_bytes=2000).strip().splitlines()[-5:]
                raise RuntimeError(
                    f"the scoring server exited {proc.restarts + 1} times while starting "
                    f"(last: {proc.last_exit}): " + " | ".join(tail)
                )
            time.sleep(0.3)
            self._still_wanted(model, version)
        raise TimeoutError(f"no answer from {address} within {self.settings.health_timeout:.0f} s")

    def _fail(self, model: str, version: str, log: Path, message: str, launched: bool) -> None:
        self._log(log, f"FAILED: {message}")
        if self.store.deployment(model, version) is None:
            return
        self.publish(model, version, FAILED, message[:2000])
        self.store.add_event(model, VERSION_UPDATE, f"Version {version} failed: {message}"[:4000], version)
        if launched:
            # A version that cannot serve must not sit in the host restarting forever.
            with self.host_lock(model):
                self.runtime.apply_host(model, launches(self.store, model), box_for(self.store, self.settings, model))
