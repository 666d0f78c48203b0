"""The swarm runtime's pure parts (service specs, names) and its reading of the Swarm API's task
list, against a fake manager; the real swarm is tests/e2e/test_swarm.py."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any

import pytest

from supervisor.isolation.box import Box
from supervisor.runtime import sockets
from supervisor.runtime.base import VersionLaunch
from supervisor.runtime.swarm import (
    SCORING_PORT,
    SwarmRuntime,
    network_name,
    service_name,
    service_options,
    task_spec,
)
from supervisor.settings import Settings

BOX = Box(uid=70001, gid=70001, memory_bytes=512 << 20, cpus=1.5, pids=256, tmp_bytes=64 << 20, replicas=2)
LAUNCH = VersionLaunch("3", Path("/opt/envs/abc/bin/python"), Path("/x"), 20017, "abc", "off")


def test_service_names_are_valid_and_distinct() -> None:
    names = {service_name("my model", v) for v in ("1", "2", "10", "a.b", "a-b")}
    assert len(names) == 5
    for n in names | {service_name("m" * 300, "9" * 40)}:
        assert len(n) <= 63 and all(ch.isalnum() or ch == "-" for ch in n)
    assert service_name("a", "1") != service_name("b", "1")
    assert len(network_name("x" * 300)) <= 63


def test_the_task_is_the_models_box(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, scoring_workers="2", swarm_constraints="node.labels.ms==true, node.role==worker",
                        swarm_spread="node.labels.zone")
    spec = task_spec(settings, LAUNCH, BOX, "reg:5000/img:t", "ms-net")
    c = spec["ContainerSpec"]
    assert c["User"] == "70001:70001" and c["ReadOnly"] is True and c["CapabilityDrop"] == ["ALL"]
    assert c["Command"][c["Command"].index("--port") + 1] == str(SCORING_PORT)
    assert c["Command"][c["Command"].index("--batching") + 1] == "off"
    assert c["Command"][c["Command"].index("--workers") + 1] == "2"
    assert [m["Target"] for m in c["Mounts"]] == ["/tmp"] and c["Mounts"][0]["Type"] == "tmpfs"
    assert c["Healthcheck"]["Test"][0] == "CMD" and "/ping" in c["Healthcheck"]["Test"][-1]
    limits = spec["Resources"]["Limits"]
    assert limits == {"NanoCPUs": 1_500_000_000, "MemoryBytes": 512 << 20, "Pids": 256}
    assert spec["Resources"]["Reservations"]["MemoryBytes"] == 128 << 20
    assert spec["Placement"]["Constraints"] == ["node.labels.ms==true", "node.role==worker"]
    assert spec["Placement"]["MaxReplicas"] == 1
    assert spec["Placement"]["Preferences"] == [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]
    assert spec["RestartPolicy"]["Condition"] == "any"
    assert spec["Networks"] == [{"Target": "ms-net"}]


def test_the_scoring_server_takes_connections_from_the_gateway_only(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    command = task_spec(settings, LAUNCH, BOX, "img", "net", ("10.0.0.1", "10.0.0.2"))["ContainerSpec"]["Command"]
    assert command[command.index("--allow-from") + 1] == "10.0.0.1,10.0.0.2"
    assert "--allow-from" not in task_spec(settings, LAUNCH, BOX, "img", "net")["ContainerSpec"]["Command"]


class InfoManager:
    def __init__(self, addr: str) -> None:
        self.addr, self.asked = addr, 0

    def info(self) -> dict[str, Any]:
        self.asked += 1
        return {"Swarm": {"NodeAddr": self.addr}}


def test_the_gateways_address_is_the_setting_or_this_machines_towards_the_manager(tmp_path: Path) -> None:
    rt = SwarmRuntime.__new__(SwarmRuntime)
    rt._gateway, rt._manager = None, InfoManager("127.0.0.1")
    rt.settings = Settings(data_dir=tmp_path, swarm_gateway_address=" 10.0.0.1, 10.0.0.2 ")
    assert rt.gateway_addresses() == ("10.0.0.1", "10.0.0.2")
    rt.settings = Settings(data_dir=tmp_path, swarm_gateway_address="any")
    assert rt.gateway_addresses() == ()
    rt.settings = Settings(data_dir=tmp_path)
    assert rt.gateway_addresses() == ("127.0.0.1",)  # the route to the manager's node address
    assert rt.gateway_addresses() == ("127.0.0.1",) and rt._manager.asked == 1  # found once


def test_updates_start_first_and_roll_back() -> None:
    options = service_options(3, 20017)
    assert options["mode"]["replicated"]["Replicas"] == 3
    assert options["update_config"]["Order"] == "start-first"
    assert options["update_config"]["FailureAction"] == "rollback"
    assert options["endpoint_spec"]["Mode"] == "dnsrr"
    assert options["endpoint_spec"]["Ports"] == [{"Protocol": "tcp", "TargetPort": SCORING_PORT,
                                                 "PublishedPort": 20017, "PublishMode": "host"}]


class FakeService:
    def __init__(self, tasks: list[dict[str, Any]], port: int) -> None:
        self._tasks, self.id, self.attrs = tasks, "svc", {"Spec": {"Labels": {"modelserve.port": str(port)}}}

    def tasks(self, filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
        wanted = (filters or {}).get("desired-state")
        return [t for t in self._tasks if wanted is None or t["DesiredState"] == wanted]


def node(addr: str, state: str = "ready", availability: str = "active") -> dict[str, Any]:
    return {"Status": {"Addr": addr, "State": state}, "Spec": {"Availability": availability}}


def task(node_id: str, state: str, desired: str = "running", err: str = "") -> dict[str, Any]:
    return {"NodeID": node_id, "DesiredState": desired, "Status": {"State": state, "Err": err, "Timestamp": node_id}}


def test_only_running_tasks_on_ready_active_nodes_are_routed(tmp_path: Path) -> None:
    rt = SwarmRuntime.__new__(SwarmRuntime)
    rt._restarts = {}
    nodes = {"a": node("10.0.0.2"), "b": node("10.0.0.3", state="down"), "c": node("10.0.0.4"),
             "d": node("10.0.0.5", availability="drain")}
    service = FakeService([task("a", "running"), task("b", "running"), task("c", "starting"),
                           task("d", "running"), task("a", "failed", "shutdown", "exit 137")], 20017)
    replicas = rt.replicas(service, nodes)
    assert [(r.address, r.state) for r in replicas] == [
        ("10.0.0.2:20017", "running"), ("10.0.0.3:20017", "node down"), ("10.0.0.4:20017", "starting"),
        ("10.0.0.5:20017", "node ready")]
    assert [r.address for r in replicas if r.state == "running"] == ["10.0.0.2:20017"]
    count, reason = rt._task_history(service, nodes)
    assert count == 1 and reason == "had its task on node 10.0.0.2 end (failed: exit 137); Swarm starts another"
    service._tasks = service._tasks[:-1]  # Swarm forgot the old task: the count stays
    assert rt._task_history(service, nodes)[0] == 1
    service._tasks.append(task("b", "running", "shutdown"))  # its node went down
    assert rt._task_history(service, nodes) == (
        1, "lost its task on node 10.0.0.3 (the node is down); Swarm starts another")
    service._tasks += [task("d", "shutdown", "shutdown"), task("c", "pending", "shutdown")]
    assert rt._task_history(service, nodes) == (
        2, "had its task on node 10.0.0.5 moved off (the node is drained); Swarm starts another")


class Ping(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tcp_server() -> Any:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ping)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_replicas_are_pinged_over_tcp_and_all_must_answer(tcp_server: str) -> None:
    assert sockets.ping(tcp_server)
    assert sockets.ping(f"{tcp_server} {tcp_server}")
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    assert not sockets.ping(f"{tcp_server} {dead}")


class FakeImages:
    def __init__(self) -> None:
        self.removed: list[str] = []

    def get(self, tag: str) -> Any:
        class Image:
            def tag(self, repo: str, tag: str) -> None:
                pass

        return Image()

    def remove(self, tag: str) -> None:
        self.removed.append(tag)


class FakeClient:
    def __init__(self, answer: list[dict[str, Any]]) -> None:
        self.images = FakeImages()
        answers = answer

        class Api:
            def push(self, repo: str, tag: str, stream: bool, decode: bool) -> Any:
                return iter(answers)

        self.api = Api()


def test_a_registry_that_refuses_the_push_fails_the_deploy_with_its_reason(tmp_path: Path) -> None:
    from supervisor.runtime.swarm import RegistryPushError

    rt = SwarmRuntime.__new__(SwarmRuntime)
    rt.settings = Settings(data_dir=tmp_path)
    rt.registry, rt.push_registry = "10.0.0.1:5000", "127.0.0.1:5000"
    rt._build_model_image = lambda model, versions, desired: "modelserve-model-m-1234:abc"  # type: ignore[method-assign]
    rt._client = FakeClient([{"status": "Preparing"}, {"error": "Get http://127.0.0.1:5000/v2/: connection refused"}])
    with pytest.raises(RegistryPushError, match="to 127.0.0.1:5000 failed: .*connection refused"):
        rt._push("m", LAUNCH, "abc")
    assert rt.client.images.removed == ["127.0.0.1:5000/modelserve-model-m-1234:abc"]  # no stray tag left
    rt._client = FakeClient([{"status": "Pushed"}])
    assert rt._push("m", LAUNCH, "abc") == "10.0.0.1:5000/modelserve-model-m-1234:abc"  # what the nodes pull
    rt.registry = ""
    with pytest.raises(RuntimeError, match="MODELSERVE_REGISTRY"):
        rt._push("m", LAUNCH, "abc")


def test_replicas_or_limits_change_the_service_but_not_its_image(tmp_path: Path) -> None:
    from dataclasses import replace

    rt = SwarmRuntime.__new__(SwarmRuntime)
    rt.settings, rt.instance, rt.registry = Settings(data_dir=tmp_path, swarm_gateway_address="10.0.0.9"), "inst", "r:5000"
    scaled, bigger = replace(BOX, replicas=3), replace(BOX, memory_bytes=1 << 30)
    assert len({rt.version_hash("m", LAUNCH, b) for b in (BOX, scaled, bigger)}) == 3
    assert rt.version_hash("m", LAUNCH, BOX) == rt.version_hash("m", LAUNCH, replace(BOX))  # adoption: stable
    before = rt.version_hash("m", LAUNCH, BOX)
    rt.settings = Settings(data_dir=tmp_path, swarm_gateway_address="10.0.0.8")
    assert rt.version_hash("m", LAUNCH, BOX) != before  # a gateway that moved rolls the services out
    assert rt.image_hash("m", LAUNCH) != rt.image_hash("m", replace(LAUNCH, version="4"))
