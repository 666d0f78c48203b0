"""One reconcile tick with fakes: what it records and changes, and what it leaves alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor.gateway import ApplyResult
from supervisor.reconciler import REGISTRY_ERROR_KEY, Reconciler
from supervisor.registry import RegistryModel, RegistryVersion
from supervisor.runtime.base import HostState, VersionLaunch
from supervisor.settings import Settings
from supervisor.store import LAUNCHING, READY, Store
from tests.support import FakeRegistry


class FakeRuntime:
    name = "fake"

    def __init__(self) -> None:
        self.running: dict[str, list[str]] = {}
        self.dead: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    def apply_host(self, model: str, versions: list[VersionLaunch], box: object = None) -> None:
        self.calls.append(("apply", model))
        self.running[model] = [v.version for v in versions]
        self.dead.discard(model)

    def stop_host(self, model: str) -> None:
        self.calls.append(("stop", model))
        self.running.pop(model, None)

    def host_state(self, model: str) -> HostState | None:
        if model not in self.running:
            return None
        return HostState(model=model, alive=model not in self.dead, pid=1, reason="killed")

    def hosts(self) -> list[str]:
        return list(self.running)

    def address(self, model: str, version: str) -> str:
        return f"unix:/s/{model}/{version}.sock"

    def routes_applied(self, addresses: Any) -> None:
        self.calls.append(("routed", ",".join(addresses)))


class FakeGateway:
    def __init__(self, runtime: FakeRuntime) -> None:
        self.tables: list[Any] = []
        self.runtime = runtime

    def apply_routes(self, models: Any, endpoints: Any = (), limits: Any = None) -> ApplyResult:
        self.tables.append(list(models))
        self.runtime.calls.append(("routes", ",".join(m.name for m in models)))
        return ApplyResult(changed=True)


@pytest.fixture()
def rec(tmp_path: Path) -> Reconciler:
    settings = Settings(data_dir=tmp_path)
    runtime = FakeRuntime()
    r = Reconciler(settings, store=Store(f"sqlite:///{tmp_path / 's.db'}"), runtime=runtime,  # type: ignore[arg-type]
                   registry=FakeRegistry(), gateway=FakeGateway(runtime))  # type: ignore[arg-type]
    r.pool.submit = lambda *a, **k: None  # type: ignore[method-assign]  # deploys are the deployer's tests
    return r


def messages(rec: Reconciler, model: str) -> list[str]:
    return [e.message for e in rec.store.events(model)]


def test_unreachable_registry_changes_nothing_and_is_reported(rec: Reconciler) -> None:
    rec.registry.models["m"] = RegistryModel("m", (RegistryVersion("1"),))  # type: ignore[attr-defined]
    rec.store.enable("m")
    rec.store.upsert_deployment("m", "1", state=READY, port=5, python="p", model_dir="d")
    rec.tick()
    before = rec.store.deployments("m")
    rec.registry.down = True  # type: ignore[attr-defined]
    plan = rec.tick()
    assert plan.skipped == ("m",) and plan.empty
    assert [(d.version, d.state, d.port) for d in rec.store.deployments("m")] == [
        (d.version, d.state, d.port) for d in before]
    assert rec.store.get_meta(REGISTRY_ERROR_KEY)
    assert any("unreachable" in m for m in messages(rec, "m"))
    rec.registry.down = False  # type: ignore[attr-defined]
    rec.tick()
    assert rec.store.get_meta(REGISTRY_ERROR_KEY) is None
    assert any("reachable again" in m for m in messages(rec, "m"))


def test_an_unreachable_registry_is_asked_once_per_tick_not_once_per_model(rec: Reconciler) -> None:
    # A hung registry costs its timeout per question: one per model held the tick for minutes.
    asked: list[str] = []
    registry = rec.registry
    real = registry.get_model

    def counting(name: str) -> RegistryModel | None:
        asked.append(name)
        return real(name)

    registry.get_model = counting  # type: ignore[method-assign]
    for name in ("a", "b", "c"):
        registry.models[name] = RegistryModel(name, (RegistryVersion("1"),))  # type: ignore[attr-defined]
        rec.store.enable(name)
    registry.down = True  # type: ignore[attr-defined]
    plan = rec.tick()
    assert len(asked) == 1 and set(plan.skipped) == {"a", "b", "c"}
    assert all(any("unreachable" in m for m in messages(rec, n)) for n in ("a", "b", "c"))


def test_archived_version_loses_its_route_before_its_process(rec: Reconciler) -> None:
    rec.registry.models["m"] = RegistryModel("m", (RegistryVersion("1", "Archived"), RegistryVersion("2")))  # type: ignore[attr-defined]
    rec.store.enable("m")
    for v in ("1", "2"):
        rec.store.upsert_deployment("m", v, state=READY, port=int(v), python="p", model_dir="d")
    rec.runtime.calls.clear()  # type: ignore[attr-defined]
    rec.tick()
    calls = rec.runtime.calls  # type: ignore[attr-defined]
    assert calls.index(("routes", "m")) < calls.index(("apply", "m"))
    assert rec.runtime.running["m"] == ["2"]  # type: ignore[attr-defined]
    assert [d.version for d in rec.store.deployments("m")] == ["2"]


def test_dead_host_is_restarted_with_an_event_and_its_versions_relaunch(rec: Reconciler) -> None:
    rec.registry.models["m"] = RegistryModel("m", (RegistryVersion("1"),))  # type: ignore[attr-defined]
    rec.store.enable("m")
    rec.store.upsert_deployment("m", "1", state=READY, port=5, python="p", model_dir="d")
    rec.tick()
    assert messages(rec, "m")[0] == "Model host started"
    rec.runtime.dead.add("m")  # type: ignore[attr-defined]
    rec.tick()
    assert "exited unexpectedly" in messages(rec, "m")[0]
    assert "m" not in rec.runtime.dead  # type: ignore[attr-defined]
    assert rec.runtime.running["m"] == ["1"]  # type: ignore[attr-defined]
    # Not READY again until its health check passes (the deployer resumes there).
    assert rec.store.deployment("m", "1").state == LAUNCHING  # type: ignore[union-attr]


def test_disabled_model_is_stopped_and_unrouted(rec: Reconciler) -> None:
    rec.registry.models["m"] = RegistryModel("m", (RegistryVersion("1"),))  # type: ignore[attr-defined]
    rec.store.enable("m")
    rec.store.upsert_deployment("m", "1", state=READY, port=5, python="p", model_dir="d")
    rec.tick()
    rec.store.disable("m")
    rec.tick()
    assert "m" not in rec.runtime.running  # type: ignore[attr-defined]
    assert rec.store.deployments("m") == []
    assert rec.gateway.tables[-1] == []  # type: ignore[attr-defined]


def test_runtime_hears_the_routed_addresses_only_after_the_gateway_applied_them(rec: Reconciler) -> None:
    rec.registry.models["m"] = RegistryModel("m", (RegistryVersion("1"),))  # type: ignore[attr-defined]
    rec.store.enable("m")
    rec.store.upsert_deployment("m", "1", state=READY, port=5, python="p", model_dir="d")
    rec.tick()  # starts the host: the version relaunches
    rec.store.upsert_deployment("m", "1", state=READY)
    rec.runtime.calls.clear()  # type: ignore[attr-defined]
    rec.tick()
    calls = rec.runtime.calls  # type: ignore[attr-defined]
    routed = calls.index(("routed", "unix:/s/m/1.sock"))
    assert calls[routed - 1] == ("routes", "m")


def test_an_unreachable_registry_is_asked_once_per_tick(rec: Reconciler) -> None:
    # A registry that hangs costs a timeout per question: one per tick, not one per enabled model,
    # so the host supervision that follows the read is not held up for minutes.
    asked: list[str] = []
    registry = rec.registry
    real = registry.get_model

    def counting(name: str) -> Any:
        asked.append(name)
        return real(name)

    registry.get_model = counting  # type: ignore[method-assign]
    for name in ("a", "b", "c"):
        rec.registry.models[name] = RegistryModel(name, (RegistryVersion("1"),))  # type: ignore[attr-defined]
        rec.store.enable(name)
    rec.registry.down = True  # type: ignore[attr-defined]
    plan = rec.tick()
    assert len(asked) == 1
    assert set(plan.skipped) == {"a", "b", "c"}
    assert all(any("unreachable" in m for m in messages(rec, n)) for n in ("a", "b", "c"))


def test_a_changed_box_is_given_to_the_host_at_the_next_tick(rec: Reconciler) -> None:
    boxes: list[Any] = []
    apply = rec.runtime.apply_host

    def recording(model: str, versions: list[VersionLaunch], box: object = None) -> None:
        boxes.append(box)
        apply(model, versions, box)

    rec.runtime.apply_host = recording  # type: ignore[method-assign]
    rec.registry.models["m"] = RegistryModel("m", (RegistryVersion("1"),))  # type: ignore[attr-defined]
    rec.store.enable("m")
    rec.store.upsert_deployment("m", "1", state=READY, port=5, python="p", model_dir="d")
    rec.tick()
    rec.tick()
    assert len(boxes) == 1 and boxes[0].network is False
    rec.store.update_box_settings("m", {"network": True, "max_processes": 64}, "boss")
    rec.tick()
    assert len(boxes) == 2 and boxes[1].network is True and boxes[1].pids == 64
    rec.tick()
    assert len(boxes) == 2


def test_a_model_without_a_uid_left_is_not_started_and_says_so_once(rec: Reconciler,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.isolation import boxes

    monkeypatch.setattr(boxes, "running_as_root", lambda: True)
    monkeypatch.setattr(boxes, "unused_by_accounts", lambda uid: True)
    rec.settings.model_uid_start = rec.settings.model_uid_end = 71000
    for name in ("a", "b"):
        rec.registry.models[name] = RegistryModel(name, (RegistryVersion("1"),))  # type: ignore[attr-defined]
        rec.store.enable(name)
        rec.store.upsert_deployment(name, "1", state=READY, port=5 if name == "a" else 6, python="p", model_dir="d")
    rec.tick()
    rec.tick()
    assert ("apply", "a") in rec.runtime.calls and ("apply", "b") not in rec.runtime.calls  # type: ignore[attr-defined]
    said = [m for m in messages(rec, "b") if "no free uid" in m]
    assert len(said) == 1 and "MODELSERVE_MODEL_UID_END" in said[0]
