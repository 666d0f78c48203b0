"""The planner is pure: hand-made registries and deployments in, a plan out."""

from __future__ import annotations

from supervisor.plan import (
    EndpointChange,
    compute_plan,
    endpoint_routes,
    endpoint_state,
    model_routes,
    stage_targets,
)
from supervisor.registry import RegistryModel, RegistryVersion
from supervisor.store import FAILED, LAUNCHING, PENDING, READY, Deployment, ServingEndpoint


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


def endpoint(name: str, *entities: tuple[str, str, str, int], pending: bool = False,
             failed: bool = False) -> ServingEndpoint:
    cfg = {"served_entities": [{"name": n, "entity_name": m, "entity_version": v} for n, m, v, _ in entities],
           "traffic_config": {"routes": [{"served_model_name": n, "traffic_percentage": p} for n, _, _, p in entities]}}
    return ServingEndpoint(id="id-" + name, name=name, creator="u", created=0, updated=0, tags=[],
                           route_optimized=False, config=None if pending else cfg, config_version=None if pending else 1,
                           pending_config=cfg if pending else None, pending_version=2 if pending else None,
                           pending_start=0, config_update="IN_PROGRESS" if pending else "NOT_UPDATING",
                           failed_config=None, update_message="")


def test_a_version_legacy_serving_and_endpoints_share_is_one_deployment() -> None:
    reg = {"m": rm(RegistryVersion("1"), RegistryVersion("2"))}
    eps = [endpoint("a", ("x", "m", "1", 100)), endpoint("b", ("y", "m", "1", 100))]
    plan = compute_plan(["m"], reg, {"m": []}, [], endpoints=eps)
    assert [(m, v.version) for m, v in plan.deploy] == [("m", "1"), ("m", "2")]


def test_disabling_legacy_serving_keeps_what_an_endpoint_uses_and_deleting_it_the_reverse() -> None:
    reg = {"m": rm(RegistryVersion("1"), RegistryVersion("2", "Archived"), RegistryVersion("3"))}
    deps = {"m": [dep("1"), dep("2"), dep("3")]}
    # Legacy off; the endpoint pins 2 (archived: an endpoint serves exactly what it lists).
    plan = compute_plan([], reg, deps, ["m"], endpoints=[endpoint("e", ("x", "m", "2", 100))])
    assert plan.stop == () and plan.remove == (("m", "1"), ("m", "3")) and plan.ensure_host == ("m",)
    # Endpoint gone, legacy on: its archived version goes, the others stay.
    plan = compute_plan(["m"], reg, deps, ["m"], endpoints=[])
    assert plan.remove == (("m", "2"),) and plan.stop == ()
    # Neither: the whole host stops.
    assert compute_plan([], reg, deps, ["m"]).stop == ("m",)


def test_aliases_and_stages_resolve_against_the_registry() -> None:
    reg = {"m": rm(RegistryVersion("1", "Production"), RegistryVersion("2", aliases=("champion",)))}
    eps = [endpoint("e", ("p", "m", "Production", 50), ("c", "m", "@champion", 50))]
    assert [v.version for _, v in compute_plan([], reg, {}, [], endpoints=eps).deploy] == ["1", "2"]


def test_a_pending_config_switches_only_when_every_entity_is_ready() -> None:
    reg = {"m": rm(RegistryVersion("1"), RegistryVersion("2"))}
    ep = endpoint("e", ("a", "m", "1", 80), ("b", "m", "2", 20), pending=True)
    waiting = compute_plan([], reg, {"m": [dep("1"), dep("2", PENDING)]}, ["m"], endpoints=[ep])
    assert waiting.endpoint_changes == ()
    done = compute_plan([], reg, {"m": [dep("1"), dep("2")]}, ["m"], endpoints=[ep])
    assert done.endpoint_changes == (EndpointChange("e", 2, True),)


def test_a_pending_config_fails_on_a_failed_entity_or_a_missing_version_but_not_on_no_answer() -> None:
    reg = {"m": rm(RegistryVersion("1"), RegistryVersion("2"))}
    ep = endpoint("e", ("a", "m", "2", 100), pending=True)
    failed = compute_plan([], reg, {"m": [Deployment("m", "2", FAILED, "uv: no such package")]}, [], endpoints=[ep])
    (change,) = failed.endpoint_changes
    assert not change.promote and "no such package" in change.message
    gone = compute_plan([], {"m": rm(RegistryVersion("1"))}, {}, [], endpoints=[ep]).endpoint_changes
    assert len(gone) == 1 and not gone[0].promote and "no version '2'" in gone[0].message
    assert compute_plan([], {}, {}, [], endpoints=[ep]).endpoint_changes == ()


def test_capture_follows_the_config_serving() -> None:
    deps = {"m": [dep("1")]}
    ep = endpoint("e", ("a", "m", "1", 100))
    assert endpoint_routes(ep, deps).capture is None
    assert ep.config is not None
    ep.config["auto_capture_config"] = {"enabled": True, "sampling_fraction": 0.25}
    assert endpoint_routes(ep, deps).capture == 0.25
    ep.config["auto_capture_config"] = {"enabled": False, "sampling_fraction": 0.25}
    assert endpoint_routes(ep, deps).capture is None
    first = endpoint("n", ("a", "m", "1", 100), pending=True)
    assert first.pending_config is not None
    first.pending_config["auto_capture_config"] = {"enabled": True, "sampling_fraction": 1.0}
    assert endpoint_routes(first, deps).capture is None  # not serving yet
    assert endpoint_routes(first, deps, promoted=True).capture == 1.0


def test_endpoint_routes_follow_the_deployments() -> None:
    deps = {"m": [dep("1"), dep("2", PENDING, aliases=["champion"])]}
    ep = endpoint("e", ("a", "m", "1", 50), ("b", "m", "@champion", 50))
    routes = endpoint_routes(ep, deps)
    assert [(e.name, e.target, e.percentage) for e in routes.entities] == [("a", ("m", "1"), 50), ("b", None, 50)]
    first = endpoint("n", ("a", "m", "1", 100), pending=True)
    assert endpoint_routes(first, deps).pending and endpoint_routes(first, deps).entities == ()
    assert endpoint_routes(first, deps, promoted=True).entities[0].target == ("m", "1")
