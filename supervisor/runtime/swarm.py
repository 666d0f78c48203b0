"""The swarm runtime: each served version is a Docker Swarm service with replicas across nodes.

Why it is built this way:

* **One service per model version**, not per model. A version is the unit the gateway routes, so
  the service's tasks are exactly one upstream's servers; a new version is a new service that
  starts beside the old one, and the old one goes only once the gateway no longer routes to it
  (``routes_applied``, as the docker runtime retires its old container). A change of the same
  version's service (its box, its replicas, a new supervisor code) is a ``service update`` with
  ``order: start-first`` and ``failure_action: rollback``, so a replica is replaced only by one
  that passed its health check, and a bad update goes back by itself.
* **The images are the docker runtime's** (this class extends ``DockerRuntime`` for the
  environment and model images, built on the local engine, with its layer cache), one image per
  version, pushed to ``MODELSERVE_REGISTRY`` so that every node pulls the same digest. A push that
  fails fails that deploy with the registry's reason; services already running are not touched.
* **No socket directory**: nodes share no file system, so the scoring server listens on TCP in the
  task, published in host mode on the node's own address at the version's port from the store
  (unique per version: two versions on one node never collide; ``max_replicas_per_node`` 1 by
  default so two replicas of one never do either). Swarm's routing mesh needs IPVS, which these
  kernels may lack; host-mode ports and ``endpoint_mode: dnsrr`` need neither. The gateway's
  upstream of a version is one ``server`` per task that runs (healthy) on a ready node, read
  from the Swarm API on every render: a task that moves, fails its health check or loses its
  node leaves the upstream within a reconcile interval.
* **The task is the box**: Swarm's restart policy and health check (``/ping``) replace the
  keeper and the model host of the other runtimes, which exist to restart servers on one host.
  Each task runs as a non-root uid, with no capabilities, a read-only root and a private tmpfs
  ``/tmp``, and the box's memory, CPU and process limits (reservations: a quarter of them, so the
  scheduler does not pack a node beyond what it can hold). Each model has an overlay network of
  its own, but a port published in host mode is open to every task: a replica of another model
  can connect to it through its node's address (checked on the test swarm). So the scoring
  server takes connections from the gateway's address only (``--allow-from``, and loopback for
  the health check); what reaches it from anywhere else is closed unread (docs/DESIGN.md,
  "Keeping models apart").
* **Found again from labels**: a restarted supervisor lists the services labelled with its
  instance and adopts them when their desired hash matches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Iterable
from typing import Any

from supervisor import naming
from supervisor.isolation.box import Box, MiB
from supervisor.runtime import sockets
from supervisor.runtime.base import HostState, VersionLaunch, VersionProcess
from supervisor.runtime.docker import (
    CONTAINER_ENV,
    LABEL_DESIRED,
    LABEL_INSTANCE,
    LABEL_MODEL,
    LABEL_MODEL_ID,
    DockerRuntime,
    container_user,
)
from supervisor.runtime.images import MODELS_ROOT, code_hash, short_hash
from supervisor.settings import Settings

LABEL_VERSION = "modelserve.version"
LABEL_PORT = "modelserve.port"
SCORING_PORT = 8080  # inside the task; published on the node at the version's own port
# Tasks in these states are on their way to serving, or serve: the others are history.
LIVE_STATES = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running")
PING = ("import sys, urllib.request; "
        f"sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{SCORING_PORT}/ping', timeout=2).status == 200 "
        "else 1)")
SECOND = 1_000_000_000  # Swarm's durations are in nanoseconds
ENDED_STATES = ("complete", "shutdown", "failed", "rejected", "orphaned", "remove")


def task_end_reason(task: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> str:
    """Why a task of a version stopped serving, in words (the node's fate first: it is the cause)."""
    status = task.get("Status") or {}
    node = nodes.get(task.get("NodeID", ""), {})
    addr = (node.get("Status") or {}).get("Addr") or "an unknown node"
    if (node.get("Status") or {}).get("State") == "down":
        why = f"lost its task on node {addr} (the node is down)"
    elif (node.get("Spec") or {}).get("Availability") == "drain":
        why = f"had its task on node {addr} moved off (the node is drained)"
    else:
        detail = status.get("Err") or status.get("Message") or "no reason given"
        why = f"had its task on node {addr} end ({status.get('State')}: {detail})"
    return why + "; Swarm starts another"


class RegistryPushError(RuntimeError):
    """The image could not be pushed; the message says why (the registry's answer)."""


def service_name(model: str, version: str) -> str:
    """A Swarm service name (letters, digits and '-', at most 63): the model's id and the version."""
    safe = "".join(ch if ch.isalnum() else "-" for ch in version)[:12]
    return f"ms-{naming.model_id(model)}"[:42].rstrip("-") + f"-v{safe}-{short_hash(version, 4)}"


def network_name(model: str) -> str:
    return f"ms-{naming.model_id(model)}"[:60]


def source_address_towards(address: str) -> str:
    """This machine's own address on the route to ``address`` (what a connection from here to it
    comes from); "" when there is no route. A UDP socket's connect sends nothing."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((address, 9))
            return str(s.getsockname()[0])
    except OSError:
        return ""


def task_spec(settings: Settings, launch: VersionLaunch, box: Box, image: str, network: str,
              gateway: tuple[str, ...] = ()) -> dict[str, Any]:
    """The service's task template, as the Engine API takes it: the version's scoring server in the
    model's box, taking connections from ``gateway``'s addresses (and loopback) only, when given."""
    from docker import types

    user = container_user(box)
    command = [str(launch.python), "/opt/modelserve/server.py", "--model-dir", f"{MODELS_ROOT}/{launch.version}",
               "--host", "0.0.0.0", "--port", str(SCORING_PORT), "--workers", str(settings.scoring_workers),
               "--batching", launch.batching or settings.batching]
    if gateway:
        command += ["--allow-from", ",".join(gateway)]
    container = types.ContainerSpec(
        image, command=command, user=f"{user[0]}:{user[1]}", env=[f"{k}={v}" for k, v in CONTAINER_ENV.items()],
        read_only=True, cap_drop=["ALL"], stop_grace_period=10 * SECOND,
        mounts=[types.Mount("/tmp", "", type="tmpfs", tmpfs_size=box.tmp_bytes, tmpfs_mode=0o1777)],
        healthcheck=types.Healthcheck(test=["CMD", "python3", "-c", PING], interval=2 * SECOND,
                                      timeout=3 * SECOND, retries=3, start_period=int(settings.health_timeout) * SECOND),
    )
    resources = types.Resources(cpu_limit=int(box.cpus * 1e9), mem_limit=box.memory_bytes,
                                cpu_reservation=int(box.cpus * 1e9) // 4, mem_reservation=box.memory_bytes // 4)
    resources["Limits"]["Pids"] = box.pids
    constraints = [c.strip() for c in settings.swarm_constraints.split(",") if c.strip()]
    preferences = [types.PlacementPreference("spread", settings.swarm_spread)] if settings.swarm_spread else None
    placement = types.Placement(constraints=constraints or None, preferences=preferences,
                                maxreplicas=settings.swarm_max_replicas_per_node or None)
    return dict(types.TaskTemplate(
        container, resources=resources, placement=placement, networks=[network],
        restart_policy=types.RestartPolicy(condition="any", delay=2 * SECOND, max_attempts=0)))


def service_options(replicas: int, port: int) -> dict[str, Any]:
    """Replicas, host-mode port and the rolling update of a version's service."""
    from docker import types

    update = types.UpdateConfig(parallelism=1, delay=0, failure_action="rollback", monitor=5 * SECOND,
                                order="start-first")
    rollback = types.RollbackConfig(parallelism=1, delay=0, failure_action="pause", monitor=5 * SECOND,
                                    order="start-first")
    endpoint = types.EndpointSpec(mode="dnsrr", ports=[{"Protocol": "tcp", "TargetPort": SCORING_PORT,
                                                        "PublishedPort": port, "PublishMode": "host"}])
    return {"mode": types.ServiceMode("replicated", replicas=replicas), "update_config": update,
            "rollback_config": rollback, "endpoint_spec": endpoint}


@dataclasses.dataclass(frozen=True)
class Replica:
    node: str  # the node's address
    state: str  # the task's state (running, starting, ...)
    address: str  # "node address:published port"


class SwarmRuntime(DockerRuntime):
    name = "swarm"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._manager: Any = None
        self.registry = settings.registry
        self.push_registry = settings.registry_push or settings.registry
        # Versions each model is to run, as last applied: a service of any other is retired once
        # the gateway no longer routes to it (unknown after a restart until the first apply).
        self._wanted: dict[str, set[str]] = {}
        self._unrouted: dict[str, float] = {}
        self._restarts: dict[str, int] = {}
        self._swarm_lock = threading.Lock()
        self._gateway: tuple[str, ...] | None = None

    @property
    def manager(self) -> Any:
        """The engine of a manager node (connected on first use, as the build engine is)."""
        if self._manager is None:
            import docker

            self._manager = (docker.DockerClient(base_url=self.settings.swarm_manager, timeout=60)
                             if self.settings.swarm_manager else self.client)
        return self._manager

    # --- where things are ----------------------------------------------------------------
    def _services(self, model: str | None = None) -> list[Any]:
        labels = [f"{LABEL_INSTANCE}={self.instance}"]
        if model is not None:
            labels.append(f"{LABEL_MODEL_ID}={naming.model_id(model)}")
        return list(self.manager.services.list(filters={"label": labels}))

    def _service(self, model: str, version: str) -> Any | None:
        import docker

        try:
            return self.manager.services.get(service_name(model, version))
        except docker.errors.NotFound:
            return None

    def _nodes(self) -> dict[str, dict[str, Any]]:
        return {n.id: n.attrs for n in self.manager.nodes.list()}

    def replicas(self, service: Any, nodes: dict[str, dict[str, Any]] | None = None) -> list[Replica]:
        """The service's tasks that are meant to run, with their node and state."""
        nodes = self._nodes() if nodes is None else nodes
        port = service.attrs["Spec"].get("Labels", {}).get(LABEL_PORT, "")
        out = []
        for task in service.tasks(filters={"desired-state": "running"}):
            state = (task.get("Status") or {}).get("State", "")
            node = nodes.get(task.get("NodeID", ""), {})
            addr = (node.get("Status") or {}).get("Addr", "")
            if state not in LIVE_STATES:
                continue
            if (node.get("Status") or {}).get("State") != "ready" or (node.get("Spec") or {}).get(
                    "Availability") != "active":
                state = "node " + ((node.get("Status") or {}).get("State") or "unknown")
            out.append(Replica(addr, state, f"{addr}:{port}"))
        return sorted(out, key=lambda r: r.address)

    # --- apply ---------------------------------------------------------------------------
    def image_hash(self, model: str, launch: VersionLaunch) -> str:
        """What the version's image holds: its tag. A change of the box or the replicas keeps the
        image, so Swarm only scales, or replaces tasks without a new pull."""
        data = {"instance": self.instance, "model": model, "base": self.settings.docker_base_image,
                "code": code_hash(), "version": [launch.version, launch.env_hash, str(launch.model_dir)]}
        return short_hash(json.dumps(data, sort_keys=True), 16)

    def version_hash(self, model: str, launch: VersionLaunch, box: Box) -> str:
        """Everything the version's service is made of: a change of it is a rolling update."""
        data = {"image": self.image_hash(model, launch), "registry": self.registry,
                "box": dataclasses.asdict(box), "user": container_user(box), "workers": self.settings.scoring_workers,
                "launch": [str(launch.python), launch.batching, launch.port], "batching": self.settings.batching,
                "placement": [self.settings.swarm_max_replicas_per_node, self.settings.swarm_constraints,
                              self.settings.swarm_spread], "health": self.settings.health_timeout,
                "gateway": list(self.gateway_addresses())}
        return short_hash(json.dumps(data, sort_keys=True), 16)

    def gateway_addresses(self) -> tuple[str, ...]:
        """Where the gateway's connections reach the replicas from: the setting, else this
        machine's source address towards the manager node (the gateway runs beside the
        supervisor), found once. Empty: taken from anywhere ("any", or no route found)."""
        configured = self.settings.swarm_gateway_address.strip()
        if configured.lower() == "any":
            return ()
        if configured:
            return tuple(a.strip() for a in configured.split(",") if a.strip())
        if self._gateway is None:
            node = (self.manager.info().get("Swarm") or {}).get("NodeAddr", "")
            found = source_address_towards(node) if node else ""
            self._gateway = (found,) if found else ()
        return self._gateway

    def apply_host(self, model: str, versions: list[VersionLaunch], box: Box) -> None:
        self._wanted[model] = {v.version for v in versions}
        if not versions:
            return
        network = self._network(model)
        for launch in versions:
            desired = self.version_hash(model, launch, box)
            service = self._service(model, launch.version)
            if service is not None and service.attrs["Spec"].get("Labels", {}).get(LABEL_DESIRED) == desired:
                continue
            image = self._push(model, launch, self.image_hash(model, launch))
            template = task_spec(self.settings, launch, box, image, network, self.gateway_addresses())
            labels = {LABEL_INSTANCE: self.instance, LABEL_MODEL: model, LABEL_MODEL_ID: naming.model_id(model),
                      LABEL_VERSION: launch.version, LABEL_DESIRED: desired, LABEL_PORT: str(launch.port)}
            options = service_options(max(1, box.replicas), launch.port)
            if service is None:
                self.manager.api.create_service(template, name=service_name(model, launch.version), labels=labels,
                                                **options)
            else:
                self.manager.api.update_service(service.id, service.version, template, name=service.name,
                                                labels=labels, **options)

    def _network(self, model: str) -> str:
        import docker

        name = network_name(model)
        with self._swarm_lock:
            try:
                self.manager.networks.get(name)
            except docker.errors.NotFound:
                self.manager.networks.create(name, driver="overlay", labels={
                    LABEL_INSTANCE: self.instance, LABEL_MODEL_ID: naming.model_id(model)})
        return name

    def _push(self, model: str, launch: VersionLaunch, image_hash: str) -> str:
        """The version's image in the registry (built on the local engine first): what nodes pull."""
        if not self.registry:
            raise RuntimeError("the swarm runtime needs MODELSERVE_REGISTRY (a registry every node can pull from)")
        local = self._build_model_image(model, [launch], image_hash)
        repo, tag = local.rsplit(":", 1)
        self.client.images.get(local).tag(f"{self.push_registry}/{repo}", tag)
        log = self._model_dir(model) / "image.log"
        try:
            for line in self.client.api.push(f"{self.push_registry}/{repo}", tag, stream=True, decode=True):
                if isinstance(line, dict) and line.get("error"):
                    raise RegistryPushError(f"pushing {repo}:{tag} to {self.push_registry} failed: {line['error']}")
        except RegistryPushError:
            raise
        except Exception as exc:
            raise RegistryPushError(f"pushing {repo}:{tag} to {self.push_registry} failed: {exc}") from None
        finally:
            with contextlib.suppress(Exception):
                self.client.images.remove(f"{self.push_registry}/{repo}:{tag}")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"pushed {repo}:{tag} to {self.push_registry}\n")
        return f"{self.registry}/{repo}:{tag}"

    # --- stop / retire -------------------------------------------------------------------
    def stop_host(self, model: str) -> None:
        import docker

        self._wanted.pop(model, None)
        for service in self._services(model):
            with contextlib.suppress(docker.errors.NotFound):
                service.remove()
        with contextlib.suppress(docker.errors.DockerException):
            # Refused while the removed services' tasks still hold it: routes_applied takes it later.
            self.manager.networks.get(network_name(model)).remove()

    def routes_applied(self, addresses: Iterable[str]) -> None:
        import docker

        routed = {a for address in addresses for a in address.split()}
        now = time.monotonic()
        services = self._services()
        # A model being applied (its network made, its first service not yet) keeps its network.
        serving = {s.attrs["Spec"].get("Labels", {}).get(LABEL_MODEL_ID) for s in services} | {
            naming.model_id(m) for m in list(self._wanted)}
        for network in self.manager.networks.list(filters={"label": f"{LABEL_INSTANCE}={self.instance}"}):
            if (network.attrs.get("Labels") or {}).get(LABEL_MODEL_ID) not in serving:
                with contextlib.suppress(docker.errors.DockerException):
                    network.remove()  # a stopped model's, once its last task let go of it
        for service in services:
            labels = service.attrs["Spec"].get("Labels", {})
            model, version = labels.get(LABEL_MODEL, ""), labels.get(LABEL_VERSION, "")
            wanted = self._wanted.get(model)
            if wanted is None or version in wanted:
                self._unrouted.pop(service.id, None)
                continue
            if any(r.address in routed for r in self.replicas(service)):
                self._unrouted.pop(service.id, None)
                continue
            since = self._unrouted.setdefault(service.id, now)
            if now - since >= self.settings.docker_drain_seconds:
                service.remove()
                self._unrouted.pop(service.id, None)

    # --- state ---------------------------------------------------------------------------
    def host_state(self, model: str) -> HostState | None:
        import docker

        try:
            services = self._services(model)
            nodes = self._nodes()
        except docker.errors.DockerException as exc:
            return HostState(model=model, alive=False, reason=f"the swarm manager does not answer: {exc}")
        if not services:
            return None
        versions: dict[str, VersionProcess] = {}
        replicas: dict[str, list[dict[str, str]]] = {}
        memory = 0
        for service in services:
            labels = service.attrs["Spec"].get("Labels", {})
            version = labels.get(LABEL_VERSION, "")
            found = self.replicas(service, nodes)
            replicas[version] = [{"node": r.node, "state": r.state} for r in found]
            restarts, last = self._task_history(service, nodes)
            versions[version] = VersionProcess(version, running=any(r.state == "running" for r in found),
                                               restarts=restarts, last_exit=last)
            limits = (service.attrs["Spec"].get("TaskTemplate", {}).get("Resources") or {}).get("Limits") or {}
            memory = max(memory, int(limits.get("MemoryBytes") or 0))
        # The services are the host: Swarm keeps them running, so the model is alive while they exist.
        return HostState(model=model, alive=True, versions=versions, replicas=replicas,
                         memory_limit_mib=memory // MiB if memory else None)

    def _task_history(self, service: Any, nodes: dict[str, dict[str, Any]]) -> tuple[int, str | None]:
        """Tasks of the service that ended or that Swarm gave up on (failed, rejected, lost with
        their node, moved off a drained one, replaced by an update), counted so that the count
        never goes down (Swarm forgets old tasks), and why the latest one ended, in words."""
        ended = [t for t in service.tasks() if (t.get("Status") or {}).get("State") in ENDED_STATES
                 or (t.get("DesiredState") != "running" and (t.get("Status") or {}).get("State") == "running")]
        count = max(self._restarts.get(service.id, 0), len(ended))
        self._restarts[service.id] = count
        # UpdatedAt moves when the manager gives a task up (a lost node's agent reports nothing).
        latest = max(ended, key=lambda t: max(t.get("UpdatedAt", ""), (t.get("Status") or {}).get("Timestamp", "")),
                     default=None)
        return count, (task_end_reason(latest, nodes) if latest is not None else None)

    def hosts(self) -> list[str]:
        return sorted({s.attrs["Spec"]["Labels"][LABEL_MODEL] for s in self._services()
                       if LABEL_MODEL in s.attrs["Spec"].get("Labels", {})})

    def address(self, model: str, version: str) -> str:
        service = self._service(model, version)
        ready = [r.address for r in self.replicas(service) if r.state == "running"] if service is not None else []
        if ready:
            return " ".join(ready)
        # Nothing runs yet: a path nothing listens on, so the gateway answers 502.
        return sockets.upstream(sockets.model_dir(self.settings.sockets_dir, model) / "none"
                                / sockets.socket_name(version))

    def container_id(self, model: str) -> str | None:
        return None

    def version_log(self, model: str, version: str, max_bytes: int = 200_000) -> str:
        service = self._service(model, version)
        if service is None:
            return ""
        try:
            out = b"".join(service.logs(stdout=True, stderr=True, tail=2000, timestamps=False))
        except Exception as exc:  # the logs of a lost node's tasks cannot be read
            return f"(the service's logs cannot be read: {exc})"
        return out[-max_bytes:].decode("utf-8", "replace")
