"""The docker runtime's apply/adopt/switch/retire decisions against a fake engine (the real engine
is exercised end to end in tests/e2e/test_docker.py)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import docker
import pytest

from supervisor.capture.spool import spool_folder, spool_path
from supervisor.isolation.box import Box
from supervisor.runtime import sockets
from supervisor.runtime.base import VersionLaunch
from supervisor.runtime.docker import DockerRuntime, container_user
from supervisor.settings import Settings

BOX = Box(uid=None, gid=None, memory_bytes=1 << 30, cpus=2.0, pids=512, tmp_bytes=64 << 20)

_ids = itertools.count(1)


class FakeContainer:
    def __init__(self, engine: FakeEngine, name: str, labels: dict[str, str]) -> None:
        self.engine, self.name, self.labels = engine, name, labels
        self.id = f"c{next(_ids)}"
        self.status = "running"
        self.starts = 1
        started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.attrs: dict[str, Any] = {"State": {"Status": "running", "StartedAt": started}}

    def reload(self) -> None:
        self.attrs["State"]["Status"] = self.status

    def start(self) -> None:
        self.status, self.starts = "running", self.starts + 1

    def restart(self, timeout: int = 10) -> None:
        self.start()

    def stop(self, timeout: int = 10) -> None:
        self.status = "exited"

    def remove(self, force: bool = False) -> None:
        self.engine.removed.append(self.name)
        self.engine.items.remove(self)


class FakeEngine:
    """Just enough of docker.DockerClient: containers, images, api.build."""

    def __init__(self) -> None:
        self.items: list[FakeContainer] = []
        self.images_built: list[str] = []
        self.removed: list[str] = []
        self.runs: list[dict[str, Any]] = []  # the options of every containers.run
        self.containers, self.images, self.api = self, self, self

    # containers
    def list(self, **kwargs: Any) -> list[FakeContainer]:
        wanted = [f.split("=", 1) for f in (kwargs.get("filters") or {}).get("label", [])]

        def matches(c: FakeContainer) -> bool:
            return all(kv[0] in c.labels and (len(kv) == 1 or c.labels[kv[0]] == kv[1]) for kv in wanted)

        return [c for c in self.items if (kwargs.get("all") or c.status == "running") and matches(c)]

    def get(self, key: str) -> Any:
        if key.startswith("modelserve-model-") and ":" in key or key.startswith("modelserve-env:"):
            if key in self.images_built:
                return key
            raise docker.errors.ImageNotFound(key)
        for c in self.items:
            if key in (c.id, c.name):
                return c
        raise docker.errors.NotFound(key)

    def run(self, image: str, name: str, labels: dict[str, str], **kwargs: Any) -> FakeContainer:
        assert kwargs["network_mode"] != "host" and kwargs["detach"] is True
        self.runs.append(kwargs)
        c = FakeContainer(self, name, labels)
        self.items.append(c)
        return c

    # images
    def build(self, tag: str, **kwargs: Any) -> list[dict[str, str]]:
        self.images_built.append(tag)
        return [{"stream": f"Successfully tagged {tag}\n"}]

    def remove(self, image: str) -> None:
        pass


@pytest.fixture()
def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DockerRuntime:
    runtime = DockerRuntime(Settings(data_dir=tmp_path, docker_drain_seconds=0))
    engine = FakeEngine()
    runtime._client = engine
    engine.images_built.append("modelserve-env:e1-" + runtime_base_hash(runtime))
    runtime.waited = []  # type: ignore[attr-defined]
    monkeypatch.setattr(runtime, "_wait_serving", lambda c, addresses: runtime.waited.append(sorted(addresses)))  # type: ignore[attr-defined]
    return runtime


def runtime_base_hash(rt: DockerRuntime) -> str:
    from supervisor.runtime.images import short_hash

    return short_hash(rt.settings.docker_base_image, 8)


def launch(tmp_path: Path, version: str) -> VersionLaunch:
    model_dir = tmp_path / "models" / version
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "MLmodel").write_text("flavors: {}")
    return VersionLaunch(version, Path("/opt/envs/e1/bin/python"), model_dir, 20000, "e1")


def test_same_version_set_is_adopted_and_a_dead_container_started_again(rt: DockerRuntime, tmp_path: Path) -> None:
    engine: FakeEngine = rt._client
    rt.apply_host("m", [launch(tmp_path, "1")], BOX)
    [first] = engine.items
    assert first.labels["modelserve.model"] == "m" and first.labels["modelserve.versions"] == "1"
    state = rt.host_state("m")
    assert state is not None and state.alive
    # The container's own socket directory, bind-mounted where its scoring servers bind.
    [run] = engine.runs
    [socket_dir] = [Path(host) for host, m in run["volumes"].items() if m["bind"] == "/run/modelserve/sock"]
    # The published link of the container's socket, which the container cannot change.
    assert rt.address("m", "1") == f"unix:{sockets.published_path(rt.settings.sockets_dir, socket_dir / '1.sock')}"
    assert socket_dir.is_relative_to(rt.settings.sockets_dir)
    uid, gid = container_user(BOX)
    assert run["user"] == f"{uid}:{gid}" and run["network_mode"] == "none" and run["read_only"]
    for d in (socket_dir, *(Path(host) for host, m in run["volumes"].items() if m["bind"] == "/state")):
        assert (d.stat().st_mode & 0o777, d.stat().st_uid, d.stat().st_gid) == (0o700, uid, gid)
    assert (socket_dir.parent.stat().st_mode & 0o077) == 0  # the model's socket tree: the gateway's alone

    restarted = DockerRuntime(rt.settings)  # a restarted supervisor: nothing in memory
    restarted._client = engine
    restarted.apply_host("m", [launch(tmp_path, "1")], BOX)
    assert engine.items == [first] and first.starts == 1 and len(engine.images_built) == 2

    first.status = "exited"
    first.attrs["State"].update(Status="exited", ExitCode=137)
    state = rt.host_state("m")
    assert state is not None and not state.alive and "SIGKILL" in (state.reason or "")
    rt.apply_host("m", [launch(tmp_path, "1")], BOX)
    assert engine.items == [first] and first.starts == 2


def test_a_new_version_set_switches_containers_and_the_old_one_goes_only_once_unrouted(
        rt: DockerRuntime, tmp_path: Path) -> None:
    engine: FakeEngine = rt._client
    rt.apply_host("m", [launch(tmp_path, "1")], BOX)
    [old] = engine.items
    old_address = rt.address("m", "1")
    rt.apply_host("m", [launch(tmp_path, "1"), launch(tmp_path, "2")], BOX)
    assert rt.waited == [[], ["1"]]  # type: ignore[attr-defined]  # the switch waited for version 1
    new = engine.items[-1]
    assert new is not old and rt.address("m", "1") != old_address
    rt.routes_applied([old_address])  # the gateway still routes to the old container
    assert old in engine.items
    rt.routes_applied([rt.address("m", "1"), rt.address("m", "2")])
    assert old not in engine.items and new in engine.items

    model_sockets = Path(rt.address("m", "1").removeprefix("unix:")).parent.parent
    rt.stop_host("m")
    assert engine.items == [] and rt.host_state("m") is None and rt.hosts() == []
    assert not model_sockets.exists()


def test_switching_back_before_the_old_container_is_retired_takes_it_back(rt: DockerRuntime, tmp_path: Path) -> None:
    engine: FakeEngine = rt._client
    rt.apply_host("m", [launch(tmp_path, "1")], BOX)
    [first] = engine.items
    address = rt.address("m", "1")
    rt.apply_host("m", [launch(tmp_path, "1"), launch(tmp_path, "2")], BOX)  # e.g. version 2 then fails
    rt.apply_host("m", [launch(tmp_path, "1")], BOX)
    assert rt.address("m", "1") == address and first in engine.items and len(engine.items) == 2
    rt.routes_applied([address])
    assert engine.items == [first]  # the container of the failed set is retired, the first one kept


def test_a_changed_box_switches_containers_like_a_new_version(rt: DockerRuntime, tmp_path: Path) -> None:
    engine: FakeEngine = rt._client
    rt.apply_host("m", [launch(tmp_path, "1")], BOX)
    [old] = engine.items
    old_dir = Path(rt.address("m", "1").removeprefix("unix:")).parent
    bigger = dataclasses.replace(BOX, memory_bytes=2 << 30, pids=1024)
    rt.apply_host("m", [launch(tmp_path, "1")], bigger)
    assert rt.waited == [[], ["1"]]  # type: ignore[attr-defined]  # version 1 answered in the new one first
    new = engine.items[-1]
    assert new is not old and engine.runs[-1]["mem_limit"] == 2 << 30 and engine.runs[-1]["pids_limit"] == 1024
    rt.routes_applied([rt.address("m", "1")])
    assert engine.items == [new] and not old_dir.exists()  # the old container's sockets went with it


def test_what_the_container_wrote_is_read_as_untrusted(rt: DockerRuntime, tmp_path: Path) -> None:
    import json

    engine: FakeEngine = rt._client
    rt.apply_host("m", [launch(tmp_path, "1")], BOX)
    [run] = engine.runs
    [state_dir] = [Path(host) for host, m in run["volumes"].items() if m["bind"] == "/state"]
    secret = tmp_path / "admin_password"
    secret.write_text("s3cret")
    (state_dir / "versions" / "1.log").symlink_to(secret)  # model code may do this in its state dir
    assert rt.version_log("m", "1") == ""
    (state_dir / "status.json").write_text(json.dumps({"updated": 1e12, "versions": {
        "1": {"state": "running", "pid": "not a pid", "restarts": -5, "last_exit": "x" * 10_000},
        "other-model": {"state": "running"}}}))
    state = rt.host_state("m")
    assert state is not None and set(state.versions) == {"1"}  # only the versions it was asked to run
    v1 = state.versions["1"]
    assert v1.pid is None and v1.restarts == 0 and len(v1.last_exit or "") <= 300


def test_the_models_spool_folder_is_mounted_kept_and_named_to_each_version(rt: DockerRuntime, tmp_path: Path) -> None:
    engine: FakeEngine = rt._client
    folder = spool_folder(rt.settings.spool_dir.resolve(), "m")
    folder.mkdir(parents=True)
    unread = folder / "ms_unread.spool.retired-1"
    unread.write_text("{}\n")
    rt.apply_host("m", [launch(tmp_path, "1")], BOX)
    [run] = engine.runs
    assert run["volumes"][str(folder)] == {"bind": "/capture", "mode": "rw"}
    assert unread.read_text() == "{}\n"  # a new container never costs unread rows
    uid, gid = container_user(BOX)
    assert (folder.stat().st_mode & 0o777, folder.stat().st_uid) == (0o700, uid)
    spec = json.loads(next(Path(h) for h, m in run["volumes"].items() if m["bind"] == "/state")
                      .joinpath("spec.json").read_text())
    argv = spec["versions"]["1"]["argv"]
    assert argv[argv.index("--capture-spool") + 1] == "/capture/" + spool_path(folder.parent, "m", "1").name
