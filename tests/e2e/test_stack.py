"""The whole stack on a real three-node swarm with ``docker stack deploy``: README.md's "Running on
a Swarm" as a user runs it (issue 13).

The module makes the swarm (``tests/e2e/swarm.py``: a network namespace, an engine and an address
per node, Debian's registry on the bridge), labels the manager as the control node, puts the
stack's images there (built as test_compose.py builds them: nodes of a real swarm would pull them
from a registry; here nothing needs to), and deploys ``compose.yaml`` + ``images/stack.yaml``
with ``MODELSERVE_RUNTIME=swarm``. Everything is then used through the gateway's host-mode port
on the manager's address, as a client of the swarm would:

* the stack's own parts all run on the control node, healthy; a model registered and enabled is
  built, pushed to the registry, and runs as a service on the workers only; scoring through the
  gateway answers;
* the supervisor's service is restarted (``docker service update --force``) under load: the
  gateway keeps serving (no request lost), and the new supervisor still drives it (a new alias is
  routed: its reload went through the gateway's control socket).

What it takes on top of the user's steps, and why: the manager's engine also listens on TCP at
its test-bridge address (the supervisor's container makes services through it; on a real manager
it uses the engine it mounts), and the supervisor builds on the shared engine of this machine (the
one ``/var/run/docker.sock`` names), which has the environment images cached.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import System, acting_as_admin
from tests.e2e.load import Load
from tests.e2e.swarm import Swarm, three_node_swarm
from tests.e2e.test_compose import ROOT, Stack, register, split_score
from tests.e2e.test_docker import BASE_IMAGE, require_engine
from tests.e2e.test_swarm import running_nodes

pytestmark = pytest.mark.e2e

NAME = "iris-compose"  # test_compose's register() names it so; this is another MLflow altogether
PARTS = ("postgres", "mlflow", "gateway", "supervisor")


@dataclass
class Deployed:
    swarm: Swarm
    name: str
    env: dict[str, str]
    url: str
    data_dir: Path

    def deploy(self) -> None:
        self.swarm.manager.docker("stack", "deploy", "--resolve-image", "never", "-c", str(ROOT / "compose.yaml"),
                                  "-c", str(ROOT / "images" / "stack.yaml"), self.name, timeout=300,
                                  env=self.env)

    def containers(self, node_index: int = 0) -> dict[str, str]:
        """The stack's containers on a node: service -> status (``Up 3 minutes (healthy)``)."""
        out = self.swarm.nodes[node_index].docker(
            "ps", "--filter", f"label=com.docker.stack.namespace={self.name}",
            "--format", '{{.Label "com.docker.swarm.service.name"}}\t{{.Status}}')
        return {line.split("\t")[0].removeprefix(f"{self.name}_"): line.split("\t")[1]
                for line in out.splitlines() if line}

    def wait_healthy(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while True:
            found = self.containers()
            if all("(healthy)" in found.get(p, "") for p in PARTS):
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p} ---\n" + self.swarm.manager.docker(
                    "service", "logs", "--tail", "30", f"{self.name}_{p}", check=False, timeout=60)[-3000:]
                    for p in PARTS)
                tasks = self.swarm.manager.docker("stack", "ps", "--no-trunc", self.name, check=False)
                raise AssertionError(f"the stack is not healthy after {timeout:.0f} s: {found}\n{tasks}\n{logs}")
            time.sleep(2)

    def supervisor_container(self) -> str:
        return self.swarm.manager.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name="
                                         f"{self.name}_supervisor")

    def model_services(self) -> list[str]:
        return self.swarm.manager.docker("service", "ls", "-q", "--filter",
                                         f"label=modelserve.model={NAME}").split()


def load_images(swarm: Swarm, tag: str) -> None:
    """The stack's two images from the shared engine into the control node's."""
    names = [f"modelserve-supervisor:{tag}", f"modelserve-postgres:{tag}"]
    save = subprocess.Popen(["docker", "save", *names], stdout=subprocess.PIPE)
    load = subprocess.run(["docker", "-H", swarm.manager.docker_host, "load"], stdin=save.stdout,
                          capture_output=True, text=True, timeout=900)
    assert save.stdout is not None
    save.stdout.close()
    assert save.wait(timeout=60) == 0 and load.returncode == 0, load.stderr[-2000:]


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    require_engine()
    started = time.monotonic()
    # Short: the scoring servers' Unix socket paths live below it (108 bytes at most).
    data_dir = Path(tempfile.mkdtemp(prefix="mss-", dir="/tmp"))
    try:
        builder = Stack(data_dir)
        builder.build()
        print(f"\nstack: images built in {time.monotonic() - started:.0f} s")
        with three_node_swarm(Path("/tmp"), manager_tcp=True, prefix="msst") as swarm:
            yield from _deployed(swarm, builder, started)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        print(f"\nstack: the module took {time.monotonic() - started:.0f} s")


def _deployed(swarm: Swarm, builder: Stack, started: float) -> Iterator[Deployed]:
    load_images(swarm, builder.env["MODELSERVE_IMAGE_TAG"])
    manager = swarm.manager
    manager.docker("node", "update", "--label-add", "modelserve.control=true",
                   manager.docker("info", "--format", "{{.Swarm.NodeID}}"))
    port = 18080  # on the manager's own address, in its own network namespace
    env = {**builder.env,
           "MODELSERVE_GATEWAY_PORT": str(port),
           "MODELSERVE_RUNTIME": "swarm",
           "MODELSERVE_DOCKER_BASE_IMAGE": BASE_IMAGE,
           "MODELSERVE_REGISTRY": swarm.registry_address,
           "MODELSERVE_REGISTRY_PUSH": swarm.push_address,
           "MODELSERVE_SWARM_MANAGER": swarm.manager_tcp,
           # The control node runs no model; the gateway's connections leave it from its address.
           "MODELSERVE_SWARM_CONSTRAINTS": "node.role==worker",
           "MODELSERVE_SWARM_GATEWAY_ADDRESS": manager.address}
    d = Deployed(swarm, f"ms{int(time.time()) % 100000}", env, f"http://{manager.address}:{port}",
                 builder.data_dir)
    try:
        d.deploy()
        d.wait_healthy()
        print(f"stack: healthy on the swarm after {time.monotonic() - started:.0f} s")
        yield d
    finally:
        with contextlib.suppress(Exception):
            manager.docker("stack", "rm", d.name, check=False, timeout=120)


@pytest.fixture(scope="module")
def stsystem(deployed: Deployed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    container = deployed.supervisor_container()
    password = deployed.swarm.manager.docker("exec", container, "modelserve", "admin-password")
    assert password and password != "password1234"
    host = deployed.swarm.manager.address
    with acting_as_admin(password, tmp_path_factory.mktemp("stack-netrc") / "netrc", host=host):
        system = System(url=deployed.url, data_dir=deployed.data_dir, env=deployed.env, admin=("admin", password))
        system.token = system.wait_for("a token", lambda: system.raw.post(
            f"{system.url}/api/2.0/modelserve/tokens/create", json={"comment": "stack e2e"},
            auth=system.admin, timeout=30).json().get("token_value"), timeout=120)
        yield system


def uri(system: System, target: str) -> str:
    return f"{system.url}/model/{NAME}/{target}/invocations"


def test_the_stack_runs_on_the_control_node_and_its_models_on_the_workers(
        deployed: Deployed, stsystem: System, iris: pd.DataFrame) -> None:
    # The stack's own parts on the control node only.
    assert set(deployed.containers()) >= set(PARTS)
    for i in (1, 2):
        assert deployed.containers(i) == {}, f"node {i} runs a part of the stack"
    rows = iris.drop(columns=["target"]).sample(5, random_state=3)
    assert register(stsystem, iris) == "1"
    assert stsystem.api("POST", "enable", registered_model_name=NAME).status_code == 200
    stsystem.wait_version(NAME, "1", "VERSION_STATE_READY", timeout=900)
    answer = stsystem.wait_for("an answer through the stack's gateway",
                               lambda: split_score(stsystem, uri(stsystem, "1"), rows), timeout=120)
    assert len(answer) == 5
    [service] = deployed.model_services()
    workers = {n.address for n in deployed.swarm.nodes[1:]}
    nodes = running_nodes(deployed.swarm, service)
    assert nodes and set(nodes) <= workers, f"the model runs on {nodes}, not only on the workers {workers}"


def test_a_restarted_supervisor_leaves_the_gateway_serving_and_drives_it_again(
        deployed: Deployed, stsystem: System, iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).head(3)
    before = deployed.supervisor_container()
    with Load([uri(stsystem, "1")], rows.to_dict(orient="records"), max_seconds=600,
              headers={"Authorization": f"Bearer {stsystem.token}"}) as load:
        stsystem.wait_for("load running", lambda: load.ok > 3, timeout=60)
        deployed.swarm.manager.docker("service", "update", "--force", "--detach", f"{deployed.name}_supervisor",
                                      timeout=120)
        stsystem.wait_for("a new supervisor container",
                          lambda: deployed.supervisor_container() not in ("", before), timeout=300)
        deployed.wait_healthy(timeout=600)
        served = load.ok
        stsystem.wait_for("load after the restart", lambda: load.ok > served + 3, timeout=60)
    assert load.failures == [], load.failures[:5]
    print(f"stack: {load.ok} requests across the supervisor's restart, none failed; slowest {load.slowest:.2f} s")
    # The new supervisor's reloads reach the gateway: a new alias becomes a route.
    MlflowClient(stsystem.url).set_registered_model_alias(NAME, "stacked", "1")
    expected = split_score(stsystem, uri(stsystem, "1"), rows)
    stsystem.wait_for("the alias routed", lambda: split_score(stsystem, uri(stsystem, "@stacked"), rows) == expected,
                      timeout=120)
