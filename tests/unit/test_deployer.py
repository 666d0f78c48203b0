"""A deploy that meets an unreachable registry waits; one that meets a broken model fails alone."""

from __future__ import annotations

import threading
from pathlib import Path

from supervisor.deployer import Deployer
from supervisor.registry import RegistryUnavailable, RegistryVersion
from supervisor.settings import Settings
from supervisor.store import FAILED, PENDING, Store


class Registry:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def download(self, name: str, version: str, dest: Path) -> Path:
        raise self.error


def deployer(tmp_path: Path, error: Exception) -> Deployer:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.enable("m")
    store.upsert_deployment("m", "1", state=PENDING)
    locks: dict[str, threading.Lock] = {}
    return Deployer(Settings(data_dir=tmp_path), store, Registry(error), runtime=object(),  # type: ignore[arg-type]
                    host_lock=lambda m: locks.setdefault(m, threading.Lock()), wake=lambda: None)


def test_unreachable_registry_leaves_the_version_pending(tmp_path: Path) -> None:
    d = deployer(tmp_path, RegistryUnavailable("connection refused"))
    d.deploy("m", RegistryVersion("1"))
    dep = d.store.deployment("m", "1")
    assert dep is not None and dep.state == PENDING and "Waiting for the model registry" in dep.state_message
    assert d.store.events("m") == []


def test_a_model_without_files_fails_that_version_with_its_reason(tmp_path: Path) -> None:
    d = deployer(tmp_path, ValueError("no MLmodel file in the artifacts"))
    d.deploy("m", RegistryVersion("1"))
    dep = d.store.deployment("m", "1")
    assert dep is not None and dep.state == FAILED and "no MLmodel" in dep.state_message
    assert "failed" in d.store.events("m")[0].message
    log = (tmp_path / "logs").rglob("1.build.log")
    assert "FAILED" in next(log).read_text()


def test_the_batching_tag_reaches_the_scoring_server_argv(tmp_path: Path) -> None:
    from supervisor.deployer import launches, write_launch_options
    from supervisor.registry import batching_tag
    from supervisor.runtime.process import ProcessRuntime
    from supervisor.store import LAUNCHING

    assert batching_tag({"modelserve.batching": "OFF"}, {"modelserve.batching": "on"}) == "off"
    assert batching_tag({}, {"modelserve.batching": "on"}) == "on"
    assert batching_tag({"modelserve.batching": "sometimes"}, None) == ""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.enable("m")
    argvs = {}
    for version, tag in (("1", "off"), ("2", "")):
        model_dir = tmp_path / "models" / version
        model_dir.mkdir(parents=True)
        write_launch_options(model_dir, RegistryVersion(version, batching=tag))
        store.upsert_deployment("m", version, state=LAUNCHING, python="/usr/bin/python3", model_dir=str(model_dir),
                                port=21000 + int(version))
    settings = Settings(data_dir=tmp_path, batching="on")
    spec = ProcessRuntime(settings).spec("m", launches(store, "m"))
    for version in ("1", "2"):
        argv = spec["versions"][version]["argv"]
        argvs[version] = argv[argv.index("--batching") + 1]
    assert argvs == {"1": "off", "2": "on"}  # the tag wins; without one, the setting
