"""The docker runtime: one container per model (its "cluster"), the model host as its entrypoint.

Why it is built this way:

* **Declarative, found again from labels.** A container carries its model, versions, ports and a
  hash of the desired state (image, versions, environments, network) in labels. ``apply_host``
  compares that hash with what is wanted, as docker-compose's convergence does: equal -> nothing
  to do (a restarted supervisor adopts the container instead of rebuilding it); the container
  dead -> it is started again; different -> a new container replaces it.
* **Replace, never restart in place.** A change of the version set builds a new image (the
  earlier versions' layers come from the cache), starts a second container beside the first one
  (new host ports in host-network mode), waits until every version the old one served answers
  its health check there, and only then points ``address`` at it. The old container keeps serving
  until ``routes_applied`` shows that the gateway no longer routes to it, plus a short drain.
* **The version logs and status live on a bind-mounted state dir** (``hosts/<model id>/<container>``),
  so ``get-version-logs`` and the restart counters read files, as in the process runtime.
* **Which container is current** is written to ``hosts/<model id>/active.json`` when it changes,
  so every process (API workers, reconciler, a restarted one) agrees on the same answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from supervisor import naming
from supervisor.envs import EnvBuilder, EnvBuildError, EnvSpec
from supervisor.isolation.box import Box
from supervisor.runtime.base import HostState, VersionLaunch, VersionProcess
from supervisor.runtime.images import (
    CONTAINER_STATE_DIR,
    MODELS_ROOT,
    ImageBuildError,
    build_image,
    ca_bundle,
    code_hash,
    container_labels,
    env_context,
    env_image_tag,
    env_python,
    model_context,
    model_image_versions,
    render_env_build,
    render_model_dockerfile,
    short_hash,
)
from supervisor.runtime.statefiles import port_is_free, read_json, tail_text, write_json
from supervisor.settings import Settings

HOST_NETWORK = "host"
LABEL_INSTANCE = "modelserve.instance"
LABEL_MODEL = "modelserve.model"
LABEL_MODEL_ID = "modelserve.model-id"
LABEL_DESIRED = "modelserve.desired-hash"
LABEL_PORTS = "modelserve.ports"
STOP_TIMEOUT = 10
# The model host rewrites status.json every 5 s; a running container whose host has not done so
# for this long is hung (or its state dir is gone) and is restarted like a dead one.
STATUS_STALE_AFTER = 45.0






def exit_reason(name: str, state: dict[str, Any]) -> str:
    """Why a container is not running, in words, from ``docker inspect``'s State."""
    status = state.get("Status") or "gone"
    code = state.get("ExitCode")
    reason = f"container {name} is {status}"
    if code is not None and status in ("exited", "dead"):
        reason += f" (exit code {code}"
        if state.get("OOMKilled"):
            reason += ", out of memory"
        elif code == 137:
            reason += ", killed by SIGKILL"
        elif code == 143:
            reason += ", stopped by SIGTERM"
        reason += ")"
    if state.get("Error"):
        reason += f": {state['Error']}"
    return reason


def stale_reason(status: dict[str, Any], started_at: float, now: float) -> str | None:
    """Why a running container's model host counts as not answering, or None while it reports."""
    updated = status.get("updated")
    last = float(updated) if isinstance(updated, int | float) else started_at
    silent = now - max(last, started_at)
    if silent > STATUS_STALE_AFTER:
        return f"its model host has not reported for {silent:.0f} s"
    return None


class DockerRuntime:
    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Containers of other data dirs (another modelserve, a test run) on the same engine are
        # never adopted nor removed.
        self.instance = short_hash(str(settings.data_dir.resolve()), 12)
        self._client: Any = None
        self._env_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._lock = threading.Lock()
        self._starting: set[str] = set()  # names of containers being started: never retired
        self._unrouted_since: dict[str, float] = {}  # container id -> when the gateway stopped routing to it

    @property
    def client(self) -> Any:
        # Connected on first use: an API worker that never asks the engine anything needs no socket.
        if self._client is None:
            import docker

            self._client = docker.from_env(timeout=max(60, int(self.settings.build_timeout)))
        return self._client

    @property
    def host_network(self) -> bool:
        return self.settings.docker_network == HOST_NETWORK

    # --- environments --------------------------------------------------------------------
    def _image_exists(self, tag: str) -> bool:
        import docker

        try:
            self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            return False
        return True

    def env_ready(self, spec: EnvSpec) -> bool:
        return self._image_exists(env_image_tag(spec.hash, self.settings.docker_base_image))

    def build_env(self, spec: EnvSpec, log_path: Path, progress: Callable[[str], None] | None = None) -> Path:
        import docker

        base = self.settings.docker_base_image
        tag = env_image_tag(spec.hash, base)
        say = progress or (lambda _msg: None)
        with self._env_locks[tag]:
            if self._image_exists(tag):
                _append(log_path, f"==> reusing environment image {tag}")
                say(f"reusing environment image {tag}")
                return env_python(spec.hash)
            build = render_env_build(spec, base, os.environ)
            uv = Path(EnvBuilder(self.settings).uv_binary(log_path))
            context = env_context(build, uv, ca_bundle(os.environ))
            say(f"building environment image {tag} on {base}")
            try:
                build_image(self.client.api, context, tag, log_path, build.build_args, say,
                            labels={"modelserve.env": spec.hash})
            except ImageBuildError as exc:
                raise EnvBuildError(str(exc), log_path) from None
            except docker.errors.DockerException as exc:
                raise EnvBuildError(f"the Docker engine failed the build: {exc}", log_path) from None
        return env_python(spec.hash)

    # --- where things are ----------------------------------------------------------------
    def _model_dir(self, model: str) -> Path:
        return self.settings.hosts_dir / naming.model_id(model)

    def _state_dir(self, model: str, container_name: str) -> Path:
        return self._model_dir(model) / container_name

    def _active_info(self, model: str) -> dict[str, Any] | None:
        return read_json(self._model_dir(model) / "active.json")

    def _containers(self, model: str | None = None) -> list[Any]:
        labels = [f"{LABEL_INSTANCE}={self.instance}"]
        if model is not None:
            labels.append(f"{LABEL_MODEL_ID}={naming.model_id(model)}")
        return list(self.client.containers.list(all=True, filters={"label": labels}))

    def _active(self, model: str) -> Any | None:
        import docker

        info = self._active_info(model)
        if info is not None:
            try:
                return self.client.containers.get(info["id"])
            except docker.errors.NotFound:
                return None
        return None

    def _address_of(self, container_name: str, port: int) -> tuple[str, int]:
        return ("127.0.0.1", port) if self.host_network else (container_name, port)

    # --- apply ---------------------------------------------------------------------------
    def desired_hash(self, model: str, versions: list[VersionLaunch]) -> str:
        data = {
            "instance": self.instance,
            "model": model,
            "base": self.settings.docker_base_image,
            "network": self.settings.docker_network,
            "workers": self.settings.scoring_workers,
            "code": code_hash(),
            "versions": sorted([v.version, v.env_hash, str(v.python), str(v.model_dir), v.batching] for v in versions),
            "batching": self.settings.batching,
        }
        return short_hash(json.dumps(data, sort_keys=True), 16)

    def apply_host(self, model: str, versions: list[VersionLaunch], box: Box) -> None:
        desired = self.desired_hash(model, versions)
        active = self._active(model)
        if active is not None and active.labels.get(LABEL_DESIRED) == desired:
            active.reload()
            if active.status != "running":
                # Same versions: start the same container again (same ports, same routes).
                (self._state_dir(model, active.name) / "status.json").unlink(missing_ok=True)
                active.start()
            elif self._stale(model, active):
                (self._state_dir(model, active.name) / "status.json").unlink(missing_ok=True)
                active.restart(timeout=STOP_TIMEOUT)
            return
        image = self._build_model_image(model, versions, desired)
        serving: list[str] = []
        if active is not None:
            active.reload()
            if active.status == "running":
                old_ports = json.loads(active.labels.get(LABEL_PORTS) or "{}")
                serving = [v.version for v in versions if v.version in old_ports]
        self._start_container(model, versions, desired, image, serving)

    def _build_model_image(self, model: str, versions: list[VersionLaunch], desired: str) -> str:
        mid = naming.model_id(model)
        tag = f"modelserve-model-{mid}:{desired}"
        if self._image_exists(tag):
            return tag
        base = self.settings.docker_base_image
        missing = [v.version for v in versions if not self._image_exists(env_image_tag(v.env_hash, base))]
        if missing:
            raise RuntimeError(f"environment image of version(s) {', '.join(missing)} is missing; "
                               "redeploy them (disable and enable the model)")
        layers = model_image_versions(((v.version, v.env_hash, v.model_dir) for v in versions), base)
        dockerfile = render_model_dockerfile(base, layers)
        build_image(self.client.api, model_context(dockerfile, layers), tag, self._model_dir(model) / "image.log",
                    labels={LABEL_INSTANCE: self.instance, LABEL_MODEL_ID: mid})
        return tag

    def _choose_ports(self, versions: list[VersionLaunch]) -> dict[str, int]:
        if not self.host_network:
            # Each container has its own network namespace: the store's port is free in it.
            return {v.version: v.port for v in versions}
        taken: set[int] = set()
        for c in self.client.containers.list(all=True, filters={"label": [LABEL_PORTS]}):
            taken |= set(json.loads(c.labels.get(LABEL_PORTS) or "{}").values())
        ports: dict[str, int] = {}
        # From the top of the range down: the store hands out the bottom to local processes.
        for port in range(self.settings.port_range_end, self.settings.port_range_start - 1, -1):
            if len(ports) == len(versions):
                break
            if port not in taken and port_is_free(port):
                ports[versions[len(ports)].version] = port
        if len(ports) < len(versions):
            raise RuntimeError("no free port left in MODELSERVE_PORT_RANGE_START..END for the new container")
        return ports

    def _spec(self, model: str, versions: list[VersionLaunch], ports: dict[str, int]) -> dict[str, Any]:
        bind = "127.0.0.1" if self.host_network else "0.0.0.0"  # noqa: S104 - the stack's private network
        return {
            "model": model,
            "versions": {
                v.version: {
                    "argv": [str(v.python), "/opt/modelserve/server.py", "--model-dir", f"{MODELS_ROOT}/{v.version}",
                             "--host", bind, "--port", str(ports[v.version]),
                             "--workers", str(self.settings.scoring_workers),
                             "--batching", v.batching or self.settings.batching,
                             "--handoff-dir", f"{CONTAINER_STATE_DIR}/versions/{v.version}.handoff"],
                    "env": {"PYTHONUNBUFFERED": "1"},
                    "log": f"{CONTAINER_STATE_DIR}/versions/{v.version}.log",
                    "liveness": {"port": ports[v.version], "seconds": self.settings.liveness_seconds},
                }
                for v in versions
            },
        }

    def _start_container(self, model: str, versions: list[VersionLaunch], desired: str, image: str,
                         serving: list[str]) -> None:

        mid = naming.model_id(model)
        name = f"modelserve-model-{mid}-{desired[:10]}"
        with self._lock:
            self._starting.add(name)
        try:
            container = self._reusable(name)
            if container is not None:
                # The same version set is still running there (a switch back within the drain
                # time, e.g. after a new version failed): take it back rather than replace it.
                ports = {k: int(v) for k, v in json.loads(container.labels.get(LABEL_PORTS) or "{}").items()}
                state_dir = self._state_dir(model, name)
            else:
                ports = self._choose_ports(versions)
                state_dir = self._state_dir(model, name)
                shutil.rmtree(state_dir, ignore_errors=True)
                (state_dir / "versions").mkdir(parents=True)
                write_json(state_dir / "spec.json", self._spec(model, versions, ports))
                network: dict[str, Any] = (
                    {"network_mode": HOST_NETWORK} if self.host_network
                    else {"network": self.settings.docker_network, "hostname": name}
                )
                container = self.client.containers.run(
                    image, name=name, detach=True,
                    labels=container_labels(model, mid, self.instance, desired, ports) | {"modelserve.image": image},
                    volumes={str(state_dir.resolve()): {"bind": CONTAINER_STATE_DIR, "mode": "rw"}},
                    **network,
                )
            self._unrouted_since.pop(container.id, None)
            try:
                self._wait_serving(container, serving, ports)
            except Exception:
                container.remove(force=True)
                shutil.rmtree(state_dir, ignore_errors=True)
                raise
            write_json(self._model_dir(model) / "active.json",
                        {"model": model, "id": container.id, "name": name, "ports": ports, "desired": desired,
                         "started": time.time()})
        finally:
            with self._lock:
                self._starting.discard(name)

    def _reusable(self, name: str) -> Any | None:
        """A running container of that name (same desired state), else None after removing any
        stopped leftover of an interrupted switch."""
        import docker

        try:
            container = self.client.containers.get(name)
        except docker.errors.NotFound:
            return None
        if container.status == "running":
            return container
        container.remove(force=True)
        return None

    def _wait_serving(self, container: Any, versions: list[str], ports: dict[str, int]) -> None:
        """Every version the old container serves must answer in the new one before the switch."""
        pending = set(versions)
        deadline = time.monotonic() + self.settings.health_timeout
        while pending:
            for version in sorted(pending):
                host, port = self._address_of(container.name, ports[version])
                with contextlib.suppress(OSError), \
                        urllib.request.urlopen(f"http://{host}:{port}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        pending.discard(version)
            if not pending:
                return
            container.reload()
            if container.status != "running":
                raise RuntimeError("the new container stopped before its versions answered: "
                                   + exit_reason(container.name, container.attrs.get("State") or {}))
            if time.monotonic() > deadline:
                raise TimeoutError(f"version(s) {', '.join(sorted(pending))} did not answer in the new container "
                                   f"within {self.settings.health_timeout:.0f} s; the old one keeps serving")
            time.sleep(0.3)

    # --- stop / retire -------------------------------------------------------------------
    def _remove(self, container: Any) -> None:
        import docker

        model = container.labels.get(LABEL_MODEL, "")
        with contextlib.suppress(docker.errors.NotFound):
            container.stop(timeout=STOP_TIMEOUT)
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
        self._unrouted_since.pop(container.id, None)
        if model:
            shutil.rmtree(self._state_dir(model, container.name), ignore_errors=True)
        image = container.labels.get("modelserve.image")
        if image:
            # Fails while another container still uses it; the layers it shares with newer images stay.
            with contextlib.suppress(docker.errors.APIError):
                self.client.images.remove(image)

    def stop_host(self, model: str) -> None:
        # Forget which container is current first: from here on nobody routes to or adopts it.
        (self._model_dir(model) / "active.json").unlink(missing_ok=True)
        for container in self._containers(model):
            self._remove(container)
        shutil.rmtree(self._model_dir(model), ignore_errors=True)

    def routes_applied(self, addresses: Iterable[str]) -> None:
        routed = set(addresses)
        now = time.monotonic()
        for container in self._containers():
            with self._lock:
                if container.name in self._starting:
                    continue
            info = self._active_info(container.labels.get(LABEL_MODEL, ""))
            if info is None or info.get("id") == container.id:
                continue
            ports = json.loads(container.labels.get(LABEL_PORTS) or "{}").values()
            if {'%s:%d' % self._address_of(container.name, p) for p in ports} & routed:
                self._unrouted_since.pop(container.id, None)
                continue
            since = self._unrouted_since.setdefault(container.id, now)
            if now - since >= self.settings.docker_drain_seconds:
                self._remove(container)

    # --- state ---------------------------------------------------------------------------
    def host_state(self, model: str) -> HostState | None:
        import docker

        info = self._active_info(model)
        if info is None:
            return None
        try:
            container = self._active(model)
        except docker.errors.DockerException as exc:
            return HostState(model=model, alive=False, reason=f"the Docker engine does not answer: {exc}")
        if container is None:
            return HostState(model=model, alive=False, reason=f"container {info.get('name')} was removed")
        alive = container.status == "running"
        status = read_json(self._state_dir(model, container.name) / "status.json") or {}
        stale = self._stale(model, container, status) if alive else None
        versions = {
            str(version): VersionProcess(
                version=str(version), running=alive and v.get("state") == "running", pid=v.get("pid"),
                restarts=int(v.get("restarts") or 0), last_exit=v.get("last_exit"),
            )
            for version, v in (status.get("versions") or {}).items()
        }
        reason = None if alive else exit_reason(container.name, container.attrs.get("State") or {})
        if stale:
            alive, reason = False, f"container {container.name} is running but {stale}"
        pid = (container.attrs.get("State") or {}).get("Pid") or None
        keeper = read_json(self._state_dir(model, container.name) / "keeper.json") or {}
        restarts = keeper.get("restarts")
        return HostState(model=model, alive=alive, pid=pid, versions=versions, reason=reason,
                         host_restarts=restarts if isinstance(restarts, int) else 0,
                         host_last_exit=str(keeper.get("last_exit") or "") or None)

    def _stale(self, model: str, container: Any, status: dict[str, Any] | None = None) -> str | None:
        if status is None:
            status = read_json(self._state_dir(model, container.name) / "status.json") or {}
        started = (container.attrs.get("State") or {}).get("StartedAt") or ""
        try:
            started_at = datetime.fromisoformat(started[:26].rstrip("Z")).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            return None
        return stale_reason(status, started_at, time.time())

    def hosts(self) -> list[str]:
        return sorted({c.labels[LABEL_MODEL] for c in self._containers() if LABEL_MODEL in c.labels})

    def address(self, model: str, version: str) -> str:
        info = self._active_info(model) or {}
        chosen = (info.get("ports") or {}).get(version)
        if chosen is None:
            return "127.0.0.1:1"  # not in the current container: nothing answers there
        host, port = self._address_of(str(info.get("name")), int(chosen))
        return f"{host}:{port}"

    def container_id(self, model: str) -> str | None:
        info = self._active_info(model)
        return str(info["id"]) if info else None

    def version_log(self, model: str, version: str, max_bytes: int = 200_000) -> str:
        info = self._active_info(model)
        if info is None:
            return ""
        path = self._state_dir(model, str(info.get("name"))) / "versions" / f"{version}.log"
        return tail_text(path, max_bytes)


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")

