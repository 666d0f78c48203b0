"""The swarm runtime end to end, on a real three-node Docker Swarm that the module makes on this
machine (``tests/e2e/swarm.py``: a network namespace, an engine and an address per node, Debian's
registry on the bridge). The supervisor and its gateway run on the host, as a manager node's own
would: images are built on the shared engine (its cached environment images), pushed to the
registry once, pulled by the nodes; the gateway reaches each replica at its node's address.

The tests run in order and build on each other: two replicas on two nodes -> a container on any
node (another model's task) reaches a replica's port but gets no answer -> a new version under
load -> a drained node and a SIGKILLed engine under load -> a restarted supervisor adopts -> a
version registered while the registry is down fails with the registry's reason, the running one
untouched -> disabling removes the services.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import System, registrar, running_system
from tests.e2e.load import Load
from tests.e2e.swarm import Swarm, three_node_swarm
from tests.e2e.test_docker import BASE_IMAGE, answer, logged_model, require_engine

pytestmark = pytest.mark.e2e

NAME = "iris-swarm"


def prewarm(swarm: Swarm, iris: pd.DataFrame, work: Path) -> None:
    """Puts the layers every version's image shares (base, model host and scoring server, the
    iris environment) in the registry and on every node, while the system starts: a CI-time
    saving only. They are the runtime's own layers (same build context, so the same cached
    layers); the runtime's push and the nodes' pulls then find them there, and a test's timings
    measure scheduling, not the first download of 0.8 GB. The environment image is built with
    the docker runtime's own builder if the shared engine has not got it yet."""
    import docker
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from supervisor.envs import read_env_spec
    from supervisor.isolation.boxes import default_box
    from supervisor.runtime.docker import DockerRuntime
    from supervisor.runtime.images import (
        build_image,
        model_context,
        model_image_versions,
        render_model_dockerfile,
    )
    from supervisor.settings import Settings

    x, y = iris.drop(columns=["target"]), iris["target"]
    local = work / "model"
    mlflow.sklearn.save_model(LogisticRegression(max_iter=500).fit(x, y), str(local), input_example=x.head(3))
    spec = read_env_spec(local)
    settings = Settings(data_dir=work / "data", docker_base_image=BASE_IMAGE)
    DockerRuntime(settings).build_env(spec, work / "env.log", default_box(settings))
    layers = model_image_versions([("1", spec.hash, local)], BASE_IMAGE)
    tag = f"modelserve-swarm-prewarm-{os.getpid()}"
    client = docker.from_env(timeout=600)
    try:
        build_image(client.api, model_context(render_model_dockerfile(BASE_IMAGE, layers), layers),
                    f"{swarm.push_address}/{tag}:1", work / "image.log")
        for line in client.api.push(f"{swarm.push_address}/{tag}", "1", stream=True, decode=True):
            assert not line.get("error"), line
    finally:
        client.images.remove(f"{swarm.push_address}/{tag}:1")
        client.close()
    pulls = [threading.Thread(target=node.docker, args=("pull", f"{swarm.registry_address}/{tag}:1"),
                              kwargs={"timeout": 600}) for node in swarm.nodes]
    for t in pulls:
        t.start()
    for t in pulls:
        t.join()


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    require_engine()
    started = time.monotonic()
    with three_node_swarm(Path("/tmp")) as s:
        print(f"\nthree-node swarm with its registry up in {time.monotonic() - started:.1f} s")
        yield s


@pytest.fixture(scope="module")
def ssystem(swarm: Swarm, iris: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    failed: list[BaseException] = []
    work = tmp_path_factory.mktemp("swarm-prewarm")  # here: the factory is not made for threads

    def warm() -> None:
        try:
            prewarm(swarm, iris, work)
        except BaseException as exc:  # said below; the test then only runs slower
            failed.append(exc)

    started = time.monotonic()
    warming = threading.Thread(target=warm, daemon=True)
    warming.start()
    extra = {"MODELSERVE_RUNTIME": "swarm", "MODELSERVE_DOCKER_BASE_IMAGE": BASE_IMAGE,
             "MODELSERVE_SWARM_MANAGER": swarm.manager.docker_host,
             "MODELSERVE_REGISTRY": swarm.registry_address, "MODELSERVE_REGISTRY_PUSH": swarm.push_address,
             "MODELSERVE_DOCKER_DRAIN_SECONDS": "1"}
    with running_system(tmp_path_factory.mktemp("modelserve-swarm"), extra) as sys_:
        warming.join(timeout=900)
        print(f"system up and shared layers on every node after {time.monotonic() - started:.1f} s"
              + (f" (prewarming failed: {failed[0]!r})" if failed else ""))
        yield sys_


@pytest.fixture(scope="module")
def sregister(ssystem: System, iris: pd.DataFrame) -> Callable[..., str]:
    return registrar(ssystem, iris)


def services(swarm: Swarm) -> dict[str, str]:
    """The model's services: version -> service id."""
    out = swarm.manager.docker("service", "ls", "--filter", f"label=modelserve.model={NAME}", "--format", "{{.ID}}")
    found = {}
    for sid in out.split():
        # One that is removed between the list and this look is gone: not counted.
        labels = swarm.manager.docker("service", "inspect", sid, "--format", "{{json .Spec.Labels}}", check=False)
        if labels:
            found[json.loads(labels)["modelserve.version"]] = sid
    return found


def running_nodes(swarm: Swarm, service: str) -> list[str]:
    """Addresses of the nodes where the service's tasks run (desired and current state running)."""
    tasks = swarm.manager.docker("service", "ps", service, "--filter", "desired-state=running",
                                 "--format", "{{.ID}} {{.CurrentState}}").splitlines()
    addrs = []
    for line in tasks:
        tid, state = line.split(" ", 1)
        if not state.startswith("Running"):
            continue
        node = swarm.manager.docker("inspect", tid, "--format", "{{.NodeID}}", check=False)
        addr = swarm.manager.docker("node", "inspect", node, "--format", "{{.Status.Addr}}", check=False) if node else ""
        if addr:  # else the task or its node went away since the list: not running there
            addrs.append(addr)
    return sorted(addrs)


def node_at(swarm: Swarm, address: str) -> Any:
    return next(n for n in swarm.nodes if n.address == address)


def node_id(swarm: Swarm, address: str) -> str:
    for nid in swarm.manager.docker("node", "ls", "-q").split():
        if swarm.manager.docker("node", "inspect", nid, "--format", "{{.Status.Addr}}") == address:
            return nid
    raise AssertionError(f"no node at {address}")


def upstreams_seen(system: System, since: float) -> set[str]:
    """Replica addresses the gateway sent scoring requests to after ``since`` (its metrics log)."""
    from supervisor.settings import Settings

    log = Settings(data_dir=system.data_dir).metrics_log
    seen = set()
    for path in (log, log.with_name(log.name + ".1")):
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            with_addr = json.loads(line)
            if with_addr.get("t", 0) >= since and with_addr.get("s") == 200:
                seen.update(a.strip() for a in str(with_addr.get("a", "")).split(",") if a.strip())
    return seen


def test_two_replicas_on_two_nodes_both_serve(swarm: Swarm, ssystem: System, sregister: Callable[..., str],
                                              iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).head(4).to_dict(orient="records")
    assert sregister(NAME) == "1"
    r = ssystem.raw.post(f"{ssystem.url}/api/2.0/modelserve/served-models/update-box", auth=ssystem.admin,
                         json={"registered_model_name": NAME, "replicas": 2}, timeout=30)
    assert r.status_code == 200 and r.json()["box"]["replicas"] == 2, r.text
    bad = ssystem.raw.post(f"{ssystem.url}/api/2.0/modelserve/served-models/update-box", auth=ssystem.admin,
                           json={"registered_model_name": NAME, "replicas": 0}, timeout=30)
    assert bad.status_code == 400 and "replicas" in bad.json()["message"]
    assert ssystem.api("POST", "enable", registered_model_name=NAME).status_code == 200
    ssystem.wait_version(NAME, "1", "VERSION_STATE_READY", timeout=900)
    v1 = services(swarm)["1"]
    nodes = ssystem.wait_for("two replicas running", lambda: len(running_nodes(swarm, v1)) == 2
                             and running_nodes(swarm, v1), timeout=300)
    assert len(set(nodes)) == 2  # on two different nodes

    url = f"{ssystem.url}/model/{NAME}/1/invocations"
    since = time.time()
    for _ in range(20):
        assert answer(url, rows) is not None
    port = json.loads(swarm.manager.docker("service", "inspect", v1, "--format", "{{json .Spec.Labels}}"))[
        "modelserve.port"]
    ssystem.wait_for("both replicas reached", lambda: upstreams_seen(ssystem, since) ==
                     {f"{n}:{port}" for n in nodes}, timeout=30)
    status = ssystem.api("GET", "get-status", registered_model_name=NAME).json()["endpoint_status"]
    assert status["state"] == "ENDPOINT_STATE_READY"


# Run in a container on a node, as another model's task would be: connect, ask for /ping, print
# what came back. "CONNECTED" shows the port itself is reachable (the hole the check closes).
PROBE = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)
print("CONNECTED", flush=True)
s.settimeout(5)
try:
    s.sendall(b"GET /ping HTTP/1.1\\r\\nHost: probe\\r\\nConnection: close\\r\\n\\r\\n")
    print(s.recv(64))
except OSError as exc:
    print(repr(exc))
"""


def test_another_task_reaches_a_replicas_port_but_only_the_gateway_is_answered(swarm: Swarm, ssystem: System) -> None:
    import requests

    v1 = services(swarm)["1"]
    image = swarm.manager.docker("service", "inspect", v1, "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}")
    port = json.loads(swarm.manager.docker("service", "inspect", v1, "--format", "{{json .Spec.Labels}}"))[
        "modelserve.port"]
    replicas = running_nodes(swarm, v1)
    assert len(replicas) == 2
    for addr in replicas:  # from the gateway's machine
        assert requests.get(f"http://{addr}:{port}/ping", timeout=10).status_code == 200
    # The nodes' engines have no default bridge: the probes join an overlay of their own, as a
    # task of another model would (its own overlay, out through the node's gateway bridge).
    swarm.manager.docker("network", "create", "--driver", "overlay", "--attachable", "ms-probe")
    try:
        for node in swarm.nodes:  # from every node: the replica's own and the others
            for addr in replicas:
                out = node.docker("run", "--rm", "--network", "ms-probe", "--entrypoint", "python3", image,
                                  "-c", PROBE, addr, str(port), timeout=180)
                assert "CONNECTED" in out and "HTTP/1." not in out, (node.address, addr, out)
    finally:
        swarm.manager.docker("network", "rm", "ms-probe", check=False)


def test_a_new_version_rolls_out_under_load_without_a_failure(swarm: Swarm, ssystem: System,
                                                              sregister: Callable[..., str],
                                                              iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).head(4).to_dict(orient="records")
    prod_url = f"{ssystem.url}/model/{NAME}/Production/invocations"
    client = MlflowClient(ssystem.url)
    client.transition_model_version_stage(NAME, "1", "Production")
    first = ssystem.wait_for("Production routed", lambda: answer(prod_url, rows), timeout=120)
    # Logged before the load (the client's logging would compete with the load thread for this
    # process), registered under it: the deploy, the switch and the removal happen under load.
    uri, _ = logged_model(ssystem, iris, [], label_shift=1)
    with Load([prod_url], rows) as load:
        assert mlflow.register_model(uri, NAME).version in ("2", 2)
        ssystem.wait_version(NAME, "2", "VERSION_STATE_READY", timeout=600)
        client.transition_model_version_stage(NAME, "2", "Production", archive_existing_versions=True)
        ssystem.wait_for("Production on version 2", lambda: (a := answer(prod_url, rows)) is not None and a != first,
                         timeout=120)
        ssystem.wait_for("version 1's service removed", lambda: set(services(swarm)) == {"2"}, timeout=180)
        time.sleep(1)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 10
    v2 = services(swarm)["2"]
    assert len(set(ssystem.wait_for("two replicas of v2", lambda: len(running_nodes(swarm, v2)) == 2
                                    and running_nodes(swarm, v2), timeout=300))) == 2


def event_messages(system: System) -> list[str]:
    return [e["message"] for e in system.api("GET", "get-event-history", registered_model_name=NAME).json()["events"]]


def wait_two_replicas(ssystem: System, swarm: Swarm, service: str, avoid: str) -> float:
    """Seconds until two replicas run again, neither on the node at ``avoid``."""
    started = time.monotonic()
    ssystem.wait_for("two replicas again", lambda: len(nodes := running_nodes(swarm, service)) == 2
                     and avoid not in nodes, timeout=240, every=0.5)
    return time.monotonic() - started


def test_a_drained_node_and_a_killed_engine_under_load(swarm: Swarm, ssystem: System, iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).head(4).to_dict(orient="records")
    url = f"{ssystem.url}/model/{NAME}/2/invocations"
    v2 = services(swarm)["2"]
    manager = swarm.manager.address
    nodes = running_nodes(swarm, v2)
    # A worker with a replica is drained; the other worker (the one the replica moves to, or
    # already on) is then the one whose engine is killed, with the drained one active again.
    drained = next(n for n in nodes if n != manager)
    with Load([url], rows) as load:
        time.sleep(2)
        swarm.manager.docker("node", "update", "--availability", "drain", node_id(swarm, drained))
        drain_seconds = wait_two_replicas(ssystem, swarm, v2, drained)
        # The event names the node's state as the reconciler sees it at its next tick: a node made
        # active again before a slow tick (CI once) reads as a plain task end. A real drain lasts.
        ssystem.wait_for("the drain's event", lambda: any(
            f"had its task on node {drained} moved off" in m for m in event_messages(ssystem)), timeout=120)
        drain_failures = list(load.failures)
        swarm.manager.docker("node", "update", "--availability", "active", node_id(swarm, drained))
        killed = next(n for n in running_nodes(swarm, v2) if n != manager)
        swarm.kill_engine(node_at(swarm, killed))
        kill_seconds = wait_two_replicas(ssystem, swarm, v2, killed)
        time.sleep(2)
    print(f"\ndrain: two replicas again after {drain_seconds:.1f} s, {len(drain_failures)} failed request(s); "
          f"SIGKILLed engine: two replicas again after {kill_seconds:.1f} s, "
          f"{len(load.failures) - len(drain_failures)} failed; {load.ok} answered")
    # One client thread: at most one request is in flight on the lost replica per fault.
    assert len(drain_failures) <= 1, drain_failures
    assert len(load.failures) <= 2, load.failures
    assert load.ok > 20
    ssystem.wait_for("the lost node's event", lambda: any(
        f"lost its task on node {killed}" in m for m in event_messages(ssystem)), timeout=120)
    assert any(f"had its task on node {drained} moved off" in m for m in event_messages(ssystem))
    swarm.start_engine(node_at(swarm, killed))  # back for the tests after this one


def test_a_restarted_supervisor_adopts_its_services(swarm: Swarm, ssystem: System, iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).head(2).to_dict(orient="records")
    before = services(swarm)
    spec_before = swarm.manager.docker("service", "inspect", before["2"], "--format", "{{.Version.Index}}")
    up = json.loads((ssystem.data_dir / "run" / "up.json").read_text())
    for name in ("reconciler", "api"):
        os.killpg(up["children"][name], signal.SIGKILL)
    assert answer(f"{ssystem.url}/model/{NAME}/2/invocations", rows) is not None  # serving never depended on them
    ssystem.wait_for("supervisor back", lambda: ssystem.api("GET", "list").status_code == 200, timeout=120)
    reconciler_log = ssystem.data_dir / "logs" / "reconciler.log"
    ssystem.wait_for("a few ticks of the new reconciler",
                     lambda: reconciler_log.read_text(errors="replace").count("reconciler running") >= 2, timeout=120)
    time.sleep(4)
    assert services(swarm) == before  # the same service, not updated: adopted
    assert swarm.manager.docker("service", "inspect", before["2"], "--format", "{{.Version.Index}}") == spec_before
    assert answer(f"{ssystem.url}/model/{NAME}/2/invocations", rows) is not None


def test_a_registry_that_is_down_fails_a_new_version_and_leaves_the_running_one(
        swarm: Swarm, ssystem: System, sregister: Callable[..., str], iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).head(2).to_dict(orient="records")
    before = services(swarm)
    assert swarm.registry is not None
    swarm.registry.terminate()  # by its pid: the registry this module started
    swarm.registry.wait(timeout=30)
    version = sregister(NAME, label_shift=2)
    failed = ssystem.wait_version(NAME, version, "VERSION_STATE_FAILED", timeout=600)
    print(f"\nregistry down: version {version} FAILED: {failed['state_message'][:200]}")
    assert "registry" in failed["state_message"].lower() and swarm.push_address in failed["state_message"]
    assert services(swarm) == before  # no service made for it, the running one untouched
    assert answer(f"{ssystem.url}/model/{NAME}/2/invocations", rows) is not None


def test_disabling_removes_the_services(swarm: Swarm, ssystem: System) -> None:
    assert ssystem.api("POST", "disable", registered_model_name=NAME).status_code == 200
    ssystem.wait_for("services gone", lambda: services(swarm) == {}, timeout=120)
