"""The docker runtime: one container per model (its "cluster"), the model host as its entrypoint.

Why it is built this way:

* **Declarative, found again from labels.** A container carries its model, versions and a hash of
  the desired state (image, versions, environments, its box) in labels. ``apply_host``
  compares that hash with what is wanted, as docker-compose's convergence does: equal -> nothing
  to do (a restarted supervisor adopts the container instead of rebuilding it); the container
  dead -> it is started again; different -> a new container replaces it.
* **Replace, never restart in place.** A change of the version set builds a new image (the
  earlier versions' layers come from the cache), starts a second container beside the first one
  (with a socket directory of its own), waits until every version the old one served answers its
  health check there, and only then points ``address`` at it. A changed box (limits, identity,
  network) is part of that hash, so it switches containers the same way. The old container keeps serving
  until ``routes_applied`` shows that the gateway no longer routes to it, plus a short drain.
* **The version logs and status live on a bind-mounted state dir** (``hosts/<model id>/<container>``),
  so ``get-version-logs`` and the restart counters read files, as in the process runtime.
* **Model code is untrusted, so a container is a box** (``hardening``): a non-root uid, no
  capabilities, no-new-privileges, a read-only root with a private tmpfs ``/tmp``, limits on
  memory (swap included), CPU and processes, and no network (``network_mode="none"``) unless its
  box turns it on. The scoring servers listen on Unix sockets in a directory of the host's,
  bind-mounted into the container, owned by the container's uid with mode 0700: the gateway (root,
  or the supervisor's own user) reaches them, nobody else on the machine does, and no port is
  ever published. What the container writes in its state dir (status, logs) is read as
  untrusted input, without following symlinks (``isolation/boxfiles.py``, ``hoststatus.py``); its
  memory cgroup's OOM count goes to the reconciler, which says "out of memory" for a kill.
* **In compose.yaml, model containers belong to the stack** without being services of it: they
  carry the Compose labels of a one-off container of the ``gateway`` service (``compose_labels``),
  so ``docker compose down`` stops and removes them, after the supervisor (which depends on the
  gateway) has stopped and can no longer start them again, while ``up``, ``restart`` and
  ``ps`` of the services leave them alone. A restarted supervisor adopts them as usual.
* **Which container is current** is written to ``hosts/<model id>/active.json`` when it changes,
  so every process (API workers, reconciler, a restarted one) agrees on the same answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import stat
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from supervisor import naming
from supervisor.capture.spool import spool_folder, spool_path
from supervisor.envs import EnvBuilder, EnvBuildError, EnvSpec
from supervisor.isolation import boxfiles
from supervisor.isolation.box import Box, MiB
from supervisor.isolation.cgroups import ModelCgroups
from supervisor.runtime import hoststatus, sockets
from supervisor.runtime.base import HostState, VersionLaunch
from supervisor.runtime.images import (
    CONTAINER_SPOOL_DIR,
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
from supervisor.runtime.statefiles import read_json, write_json
from supervisor.settings import Settings

LABEL_INSTANCE = "modelserve.instance"
LABEL_MODEL = "modelserve.model"
LABEL_MODEL_ID = "modelserve.model-id"
LABEL_DESIRED = "modelserve.desired-hash"
LABEL_VERSIONS = "modelserve.versions"
STOP_TIMEOUT = 10
# The model host rewrites status.json every 5 s; a running container whose host has not done so
# for this long is hung (or its state dir is gone) and is restarted like a dead one.
STATUS_STALE_AFTER = 45.0
# The identity of a model without a uid of its own (its box has none): "nobody" when the
# supervisor is root. Every such model shares it, which costs little here: a container sees only
# its own state and socket directories, and no network.
NOBODY = 65534
# The image is read-only and HOME would be a directory nobody may write: whatever model code wants
# to cache (matplotlib, Hugging Face, ...) goes to the private /tmp. No host variable is passed
# on, so no secret of the supervisor's reaches model code.
CONTAINER_ENV = {
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "MPLCONFIGDIR": "/tmp/matplotlib",
    "PYTHONDONTWRITEBYTECODE": "1",  # it could not write __pycache__ into the image anyway
}


# The Compose service whose one-off containers the model containers count as (compose.yaml).
COMPOSE_SERVICE = "gateway"


def compose_labels(own_labels: dict[str, str]) -> dict[str, str]:
    """The labels that make a model container part of the Compose project the supervisor's own
    container (``own_labels``) belongs to; none when it is not in one."""
    project = own_labels.get("com.docker.compose.project")
    if not project:
        return {}
    return {"com.docker.compose.project": project, "com.docker.compose.service": COMPOSE_SERVICE,
            "com.docker.compose.oneoff": "True"}


def engine_info() -> dict[str, Any]:
    """``docker info`` of the engine the runtime drives (DOCKER_HOST, else the local socket)."""
    import docker

    client = docker.from_env(timeout=10)
    try:
        return dict(client.info())
    finally:
        client.close()


def container_user(box: Box) -> tuple[int, int]:
    """The uid:gid a model's container runs as, never root: the box's own identity when it has
    one; else "nobody" for a root supervisor, or the supervisor's own (unprivileged) uid, since
    an ordinary user could neither chown the bind-mounted directories to another uid nor then
    let its gateway (running as that same user) into them."""
    if box.uid is not None:
        return box.uid, box.gid if box.gid is not None else box.uid
    if os.geteuid() == 0:
        return NOBODY, NOBODY
    return os.geteuid(), os.getegid()


def hardening(box: Box, user: tuple[int, int]) -> dict[str, Any]:
    """The ``containers.run`` options that make a container the model's box."""
    return {
        "user": f"{user[0]}:{user[1]}",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        # tmpfs pages are charged to the container's memory cgroup: /tmp cannot grow past the limit.
        "tmpfs": {"/tmp": f"size={box.tmp_bytes},mode=1777"},
        "pids_limit": box.pids,
        "mem_limit": box.memory_bytes,
        "memswap_limit": box.memory_bytes,  # equal: swap never extends the limit
        "nano_cpus": int(box.cpus * 1e9),
        "environment": dict(CONTAINER_ENV),
        # No network at all (only its own loopback), unless a MANAGE user turned it on: then the
        # engine's default bridge, never the host's network nor the stack's private one. Such a
        # container has a loopback of its own, so it cannot reach the host's 127.0.0.1 services
        # (MLflow, the supervisor API); it can reach whatever the host or its LAN serve on other
        # addresses, as any outbound network would.
        "network_mode": "bridge" if box.network else "none",
    }


def container_cgroups(container_id: str, root: Path = Path("/sys/fs/cgroup")) -> ModelCgroups | None:
    """The container's memory cgroup, where the kernel counts its out-of-memory kills (Docker's
    cgroupfs and systemd drivers' paths, cgroup v1 and v2). None when not found: the supervisor
    then does not share the engine's /sys (it runs in a container itself, or on another machine),
    and only the container's PID 1 is known to be OOM-killed (``State.OOMKilled``)."""
    candidates = (
        (1, root / "memory" / "docker" / container_id),
        (1, root / "memory" / "system.slice" / f"docker-{container_id}.scope"),
        (2, root / "docker" / container_id),
        (2, root / "system.slice" / f"docker-{container_id}.scope"),
    )
    for version, path in candidates:
        if (path / ("memory.oom_control" if version == 1 else "memory.events")).exists():
            return ModelCgroups(version, (path,))
    return None


def exit_reason(name: str, state: dict[str, Any]) -> str:
    """Why a container is not running, in words, from ``docker inspect``'s State."""
    status = state.get("Status") or "gone"
    code = state.get("ExitCode")
    reason = f"container {name} is {status}"
    if code is not None and status in ("exited", "dead"):
        reason += f" (exit code {code}"
        if code == 137:
            reason += ", killed by SIGKILL"
        elif code == 143:
            reason += ", stopped by SIGTERM"
        if state.get("OOMKilled"):
            # The engine sets it for an OOM kill of any process in the container during its life,
            # not only of the one whose exit ended it: said beside the exit, never instead of it.
            reason += "; a process in it ran out of memory"
        reason += ")"
    if state.get("Error"):
        reason += f": {state['Error']}"
    return reason


def stale_reason(updated: float | None, started_at: float, now: float) -> str | None:
    """Why a running container's model host counts as not answering, or None while it reports
    (``updated``: when its status record says it was written)."""
    last = updated if updated is not None else started_at
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
        self._compose_labels: dict[str, str] | None = None

    @property
    def client(self) -> Any:
        # Connected on first use: an API worker that never asks the engine anything needs no socket.
        if self._client is None:
            import docker

            self._client = docker.from_env(timeout=max(60, int(self.settings.build_timeout)))
        return self._client

    def _stack_labels(self) -> dict[str, str]:
        """Compose labels for model containers when the supervisor runs in compose.yaml (its
        container is found by its hostname, the container id, which a container sharing the
        gateway's network has too: same project)."""
        if not self.settings.compose:
            return {}
        if self._compose_labels is None:
            import docker

            try:
                own = self.client.containers.get(socket.gethostname()).labels or {}
            except docker.errors.DockerException:
                own = {}
            self._compose_labels = compose_labels(own)
        return self._compose_labels

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

    def build_env(self, spec: EnvSpec, log_path: Path, box: Box, progress: Callable[[str], None] | None = None
                  ) -> Path:
        # The build runs in the engine's build container (its own root file system, writing only
        # the image being built, with the index settings as its only variables): the box is the
        # container's, whatever the model's.
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

    def _socket_dir(self, model: str, desired: str) -> Path:
        """A container's own socket directory: an old and a new container serve side by side
        during a switch, each binding the same version names."""
        return sockets.model_dir(self.settings.sockets_dir, model) / desired[:10]

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

    def _published(self, socket_dir: Path, version: str) -> str:
        """The gateway's address of a version's socket: a verified link outside the container's
        reach (``sockets.publish``), never the path the container itself can change."""
        source = socket_dir / sockets.socket_name(version)
        published = sockets.published_path(self.settings.sockets_dir, source)
        sockets.publish(source, published)
        return sockets.upstream(published)

    def _addresses(self, model: str, desired: str, versions: Iterable[str]) -> dict[str, str]:
        socket_dir = self._socket_dir(model, desired)
        return {v: self._published(socket_dir, v) for v in versions}

    # --- apply ---------------------------------------------------------------------------
    def desired_hash(self, model: str, versions: list[VersionLaunch], box: Box) -> str:
        data = {
            "instance": self.instance,
            "model": model,
            "base": self.settings.docker_base_image,
            # One container whatever the replicas: changing them must not replace it.
            "box": {k: v for k, v in dataclasses.asdict(box).items() if k != "replicas"},
            "user": container_user(box),
            "workers": self.settings.scoring_workers,
            "code": code_hash(),
            "versions": sorted([v.version, v.env_hash, str(v.python), str(v.model_dir), v.batching] for v in versions),
            "batching": self.settings.batching,
        }
        return short_hash(json.dumps(data, sort_keys=True), 16)

    def apply_host(self, model: str, versions: list[VersionLaunch], box: Box) -> None:
        desired = self.desired_hash(model, versions, box)
        active = self._active(model)
        if active is not None and active.labels.get(LABEL_DESIRED) == desired:
            active.reload()
            if active.status != "running":
                # Same versions: start the same container again (same sockets, same routes).
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
                old = set((active.labels.get(LABEL_VERSIONS) or "").split(","))
                serving = [v.version for v in versions if v.version in old]
        self._start_container(model, versions, box, desired, image, serving)

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

    def _spec(self, model: str, versions: list[VersionLaunch]) -> dict[str, Any]:
        def in_box(version: str) -> str:
            return f"{sockets.IN_BOX_DIR}/{sockets.socket_name(version)}"

        return {
            "model": model,
            "versions": {
                v.version: {
                    "argv": [str(v.python), "/opt/modelserve/server.py", "--model-dir", f"{MODELS_ROOT}/{v.version}",
                             "--socket", in_box(v.version),
                             "--workers", str(self.settings.scoring_workers),
                             "--batching", v.batching or self.settings.batching,
                             "--handoff-dir", f"{CONTAINER_STATE_DIR}/versions/{v.version}.handoff",
                             "--capture-spool", f"{CONTAINER_SPOOL_DIR}/{spool_path(Path(), model, v.version).name}"],
                    "env": {"PYTHONUNBUFFERED": "1"},
                    "log": f"{CONTAINER_STATE_DIR}/versions/{v.version}.log",
                    "liveness": {"socket": in_box(v.version), "seconds": self.settings.liveness_seconds},
                }
                for v in versions
            },
        }

    def _start_container(self, model: str, versions: list[VersionLaunch], box: Box, desired: str, image: str,
                         serving: list[str]) -> None:
        mid = naming.model_id(model)
        name = f"modelserve-model-{mid}-{desired[:10]}"
        state_dir = self._state_dir(model, name)
        socket_dir = self._socket_dir(model, desired)
        with self._lock:
            self._starting.add(name)
        try:
            # A container of this name still running serves the same desired state (a switch back
            # within the drain time, e.g. after a new version failed): taken back, not replaced.
            container = self._reusable(name)
            if container is None:
                user = container_user(box)
                for d in (state_dir, socket_dir):
                    shutil.rmtree(d, ignore_errors=True)
                (state_dir / "versions").mkdir(parents=True)
                # Above the container's own (the gateway's and supervisor's) nobody else may enter:
                # a local process running as "nobody" must not read a shared-uid model's files.
                self._model_dir(model).chmod(0o700)
                write_json(state_dir / "spec.json", self._spec(model, versions))
                # The model directory of sockets is the gateway's alone; each container's own below it.
                socket_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                socket_dir.mkdir(mode=0o700)
                for d in (state_dir, socket_dir):
                    own(d, user)
                spools = spool_folder(self.settings.spool_dir.resolve(), model)
                own_folder(spools, user)
                container = self.client.containers.run(
                    image, name=name, detach=True,
                    labels=container_labels(model, mid, self.instance, desired, [v.version for v in versions])
                    | {"modelserve.image": image} | self._stack_labels(),
                    volumes={str(state_dir.resolve()): {"bind": CONTAINER_STATE_DIR, "mode": "rw"},
                             str(socket_dir.resolve()): {"bind": sockets.IN_BOX_DIR, "mode": "rw"},
                             str(spools): {"bind": CONTAINER_SPOOL_DIR, "mode": "rw"}},
                    **hardening(box, user),
                )
            self._unrouted_since.pop(container.id, None)
            try:
                self._wait_serving(container, self._addresses(model, desired, serving))
            except Exception:
                container.remove(force=True)
                for d in (state_dir, socket_dir):
                    shutil.rmtree(d, ignore_errors=True)
                raise
            write_json(self._model_dir(model) / "active.json",
                       {"model": model, "id": container.id, "name": name, "desired": desired,
                        "versions": [v.version for v in versions], "socket_dir": str(socket_dir),
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

    def _wait_serving(self, container: Any, addresses: dict[str, str]) -> None:
        """Every version the old container serves must answer in the new one before the switch."""
        pending = dict(addresses)
        deadline = time.monotonic() + self.settings.health_timeout
        while pending:
            for version, address in sorted(pending.items()):
                # Linked for the gateway once the server has bound it (until then there is nothing).
                published = Path(address.removeprefix("unix:"))
                source = sockets.source_path(self.settings.sockets_dir, published)
                if sockets.publish(source, published) and sockets.ping(address):
                    del pending[version]
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
            desired = container.labels.get(LABEL_DESIRED)
            if desired:
                socket_dir = self._socket_dir(model, desired)
                shutil.rmtree(socket_dir, ignore_errors=True)
                shutil.rmtree(sockets.published_path(self.settings.sockets_dir, socket_dir), ignore_errors=True)
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
        shutil.rmtree(sockets.model_dir(self.settings.sockets_dir, model), ignore_errors=True)
        shutil.rmtree(sockets.published_path(self.settings.sockets_dir,
                                             sockets.model_dir(self.settings.sockets_dir, model)), ignore_errors=True)

    def routes_applied(self, addresses: Iterable[str]) -> None:
        routed = set(addresses)
        now = time.monotonic()
        for container in self._containers():
            with self._lock:
                if container.name in self._starting:
                    continue
            model = container.labels.get(LABEL_MODEL, "")
            info = self._active_info(model)
            if info is None or info.get("id") == container.id:
                continue
            served = self._addresses(model, container.labels.get(LABEL_DESIRED, ""),
                                     (container.labels.get(LABEL_VERSIONS) or "").split(","))
            if set(served.values()) & routed:
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
        # Written in a directory the model's own code may write: read without following symlinks,
        # and every field checked (supervisor/runtime/hoststatus.py).
        state_dir = self._state_dir(model, container.name)
        record = boxfiles.read_record(state_dir, "status.json")
        stale = self._stale(model, container, record) if alive else None
        wanted = [v for v in (container.labels.get(LABEL_VERSIONS) or "").split(",") if v]
        versions = hoststatus.processes(hoststatus.versions_of(record, wanted),
                                        running=lambda e: alive and e["state"] == "running")
        reason = None if alive else exit_reason(container.name, container.attrs.get("State") or {})
        if stale:
            alive, reason = False, f"container {container.name} is running but {stale}"
        pid = (container.attrs.get("State") or {}).get("Pid") or None
        keeper = boxfiles.read_record(state_dir, "keeper.json") or {}
        restarts = keeper.get("restarts")
        groups = container_cgroups(container.id) if container.status == "running" else None
        memory = int((container.attrs.get("HostConfig") or {}).get("Memory") or 0)
        return HostState(model=model, alive=alive, pid=pid, versions=versions, reason=reason,
                         host_restarts=restarts if isinstance(restarts, int) and 0 <= restarts < 1 << 30 else 0,
                         host_last_exit=hoststatus._text(keeper.get("last_exit")),
                         oom_kills=groups.oom_kills() if groups is not None else 0,
                         memory_limit_mib=memory // MiB if memory else None)

    def _stale(self, model: str, container: Any, record: dict[str, Any] | None = None) -> str | None:
        if record is None:
            record = boxfiles.read_record(self._state_dir(model, container.name), "status.json")
        started = (container.attrs.get("State") or {}).get("StartedAt") or ""
        try:
            started_at = datetime.fromisoformat(started[:26].rstrip("Z")).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            return None
        return stale_reason(hoststatus.updated_at(record), started_at, time.time())

    def hosts(self) -> list[str]:
        return sorted({c.labels[LABEL_MODEL] for c in self._containers() if LABEL_MODEL in c.labels})

    def address(self, model: str, version: str) -> str:
        info = self._active_info(model) or {}
        if version in (info.get("versions") or []) and info.get("socket_dir"):
            return self._published(Path(str(info["socket_dir"])), version)
        # Not in the current container: a path nothing listens on, so the gateway answers 502.
        return sockets.upstream(sockets.model_dir(self.settings.sockets_dir, model) / "none"
                                / sockets.socket_name(version))

    def container_id(self, model: str) -> str | None:
        info = self._active_info(model)
        return str(info["id"]) if info else None

    def version_log(self, model: str, version: str, max_bytes: int = 200_000) -> str:
        info = self._active_info(model)
        if info is None:
            return ""
        return boxfiles.tail(self._state_dir(model, str(info.get("name"))), f"versions/{version}.log", max_bytes)


def own(path: Path, user: tuple[int, int]) -> None:
    """Hands a bind-mounted directory (and what the supervisor wrote in it) to the container's
    uid, mode 0700: the model's own files and sockets, which no other local user may reach. Only
    root can give files away; an ordinary supervisor's container runs as itself (container_user)."""
    if os.geteuid() == 0:
        for root, dirs, files in os.walk(path):
            for entry in (root, *(os.path.join(root, n) for n in dirs + files)):
                os.chown(entry, *user)
    path.chmod(0o700)


def own_folder(path: Path, user: tuple[int, int]) -> None:
    """The model's spool folder, kept across containers (unread spools must survive a switch), so
    unlike ``own`` nothing inside is touched: it is the model's, and a symlink it left there must
    not hand its target over. Whatever is in the folder's place and is not a directory goes."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, *user, follow_symlinks=False)
    path.chmod(0o700)


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")

