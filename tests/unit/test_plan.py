"""The planner is pure: hand-made registries and deployments in, a plan out."""

from __future__ import annotations

from supervisor.plan import compute_plan, endpoint_state, model_routes, stage_targets
from supervisor.registry import RegistryModel, RegistryVersion
from supervisor.store import FAILED, LAUNCHING, PENDING, READY, Deployment


def rm(*versions: RegistryVersion) -> RegistryModel:
    return RegistryModel("m", tuple(versions))


def dep(version: str, state: str = READY, stage: str = "None", aliases: list[str] | None = None,
        port: int | None = 1) -> Deployment:
    return Deployment("m", version, state, port=port, stage=stage, aliases=aliases or [])


def test_new_versions_are_deployed_and_archived_ones_removed() -> None:
    reg = {"m": rm(RegistryVersion("1", "Archived"), RegistryVersion("2", "Production"), RegistryVersion("3"))}
    plan = compute_plan(["m"], reg, {"m": [dep("1"), dep("2", stage="Production")]}, ["m"])
    assert [(m, v.version) for m, v in plan.deploy] == [("m", "3")]
    assert plan.remove == (("m", "1"),)
    assert plan.stop == ()


def test_in_flight_versions_are_not_deployed_twice_and_unfinished_ones_resume() -> None:
    reg = {"m": rm(RegistryVersion("1"), RegistryVersion("2"))}
    deps = {"m": [dep("1", PENDING), dep("2", LAUNCHING)]}
    assert [v.version for _, v in compute_plan(["m"], reg, deps, [], in_flight=[("m", "1")]).deploy] == ["2"]
    assert [v.version for _, v in compute_plan(["m"], reg, deps, []).deploy] == ["1", "2"]


def test_failed_versions_are_not_retried_every_tick() -> None:
    reg = {"m": rm(RegistryVersion("1"))}
    assert compute_plan(["m"], reg, {"m": [dep("1", FAILED)]}, ["m"]).deploy == ()


def test_disabled_models_are_stopped_and_unreachable_ones_left_alone() -> None:
    plan = compute_plan(["a"], {}, {"b": [dep("1")], "a": [dep("1")]}, ["a", "b", "c"])
    assert plan.stop == ("b", "c")
    assert plan.skipped == ("a",)
    assert plan.remove == () and plan.deploy == ()


def test_deleted_model_removes_all_versions() -> None:
    plan = compute_plan(["m"], {"m": None}, {"m": [dep("1"), dep("2")]}, ["m"])
    assert plan.remove == (("m", "1"), ("m", "2"))


def test_stage_and_alias_moves_are_relabels() -> None:
    reg = {"m": rm(RegistryVersion("1", "Production", ("champion",)))}
    plan = compute_plan(["m"], reg, {"m": [dep("1")]}, ["m"])
    assert [(r.version, r.stage, r.aliases) for r in plan.relabel] == [("1", "Production", ("champion",))]


def test_pending_registrations_are_not_served() -> None:
    reg = {"m": rm(RegistryVersion("1", status="PENDING_REGISTRATION"))}
    assert compute_plan(["m"], reg, {}, []).deploy == ()


def test_stage_route_prefers_the_newest_ready_version() -> None:
    deps = [dep("1", stage="Production"), dep("2", PENDING, stage="Production"), dep("3", FAILED, stage="Production")]
    assert stage_targets(deps)["Production"].version == "1"
    assert stage_targets([dep("2", PENDING, stage="Staging")])["Staging"].version == "2"


def test_model_routes_maps_ready_pending_and_skips_failed() -> None:
    deps = [dep("1", stage="Production", aliases=["a"]), dep("2", PENDING), dep("3", FAILED, aliases=["b"])]
    routes = model_routes("m", deps, lambda d: f"unix:/s/{d.version}.sock")
    assert [(v.version, v.state, v.address) for v in routes.versions] == [
        ("1", "ready", "unix:/s/1.sock"), ("2", "pending", None)]
    assert routes.stages == (("Production", "1"),)
    assert routes.aliases == (("a", "1"),)


def test_endpoint_state() -> None:
    assert endpoint_state([], host_alive=True)[0] == "ENDPOINT_STATE_READY"
    assert endpoint_state([dep("1")], host_alive=False)[0] == "ENDPOINT_STATE_PENDING"
    assert endpoint_state([dep("1", LAUNCHING)], host_alive=True)[0] == "ENDPOINT_STATE_PENDING"
    assert endpoint_state([dep("1", FAILED)], host_alive=True)[0] == "ENDPOINT_STATE_FAILED"
    assert endpoint_state([dep("1", FAILED), dep("2")], host_alive=True)[0] == "ENDPOINT_STATE_READY"
