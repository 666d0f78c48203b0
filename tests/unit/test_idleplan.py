"""Scale to zero's decisions: who sleeps after the idle time, who wakes, and who never sleeps."""

from __future__ import annotations

from typing import Any

from supervisor.idleplan import idle_changes
from supervisor.plan import endpoint_routes
from supervisor.store import ASLEEP, LAUNCHING, READY, Deployment, ServingEndpoint

IDLE = 60.0
NOW = 10_000.0


def dep(version: str, state: str = READY) -> Deployment:
    return Deployment("m", version, state, port=1)


def endpoint(name: str, *entities: tuple[str, str, bool]) -> ServingEndpoint:
    cfg = {"served_entities": [{"name": n, "entity_name": "m", "entity_version": v, "scale_to_zero_enabled": z}
                               for n, v, z in entities],
           "traffic_config": {"routes": [{"served_model_name": n, "traffic_percentage": 100 // len(entities)}
                                         for n, _, _ in entities]}}
    return ServingEndpoint(id="id-" + name, name=name, creator="u", created=0, updated=0, tags=[],
                           route_optimized=False, config=cfg, config_version=1, pending_config=None,
                           pending_version=None, pending_start=None, config_update="NOT_UPDATING",
                           failed_config=None, update_message="")


def changes(deps: list[Deployment], endpoints: list[ServingEndpoint], **kw: Any) -> tuple[Any, Any]:
    args: dict[str, Any] = {"legacy": (), "last_seen": {}, "awake_since": {}, "asked": (), "now": NOW,
                            "idle_seconds": IDLE, **kw}
    got = idle_changes({"m": deps}, endpoints, **args)
    return got.sleep, got.wake


def test_an_idle_entity_sleeps_after_the_idle_time_since_its_last_request_or_its_waking() -> None:
    eps = [endpoint("e", ("a", "1", True), ("b", "2", False))]
    assert changes([dep("1"), dep("2")], eps, awake_since={("m", "1"): NOW - IDLE}) == ((("m", "1"),), ())
    assert changes([dep("1")], eps, awake_since={("m", "1"): NOW - IDLE + 1}) == ((), ())
    assert changes([dep("1")], eps, awake_since={("m", "1"): 0.0}, last_seen={("m", "1"): NOW - 5}) == ((), ())
    # Never seen ready before (a reconciler just started): counted active from now.
    assert changes([dep("1")], eps) == ((), ())


def test_a_version_another_use_needs_awake_never_sleeps() -> None:
    long_ago = {"awake_since": {("m", "1"): 0.0}}
    # Legacy serving, an entity without scale to zero (another endpoint), or none at all.
    assert changes([dep("1")], [endpoint("e", ("a", "1", True))], legacy=("m",), **long_ago) == ((), ())
    assert changes([dep("1")], [endpoint("e", ("a", "1", True)), endpoint("f", ("x", "1", False))],
                   **long_ago) == ((), ())
    assert changes([dep("1")], [], **long_ago) == ((), ())
    assert changes([dep("1", LAUNCHING)], [endpoint("e", ("a", "1", True))], **long_ago) == ((), ())


def test_a_sleeper_wakes_when_asked_for_or_when_a_use_needs_it_awake() -> None:
    eps = [endpoint("e", ("a", "1", True))]
    assert changes([dep("1", ASLEEP)], eps) == ((), ())
    assert changes([dep("1", ASLEEP)], eps, asked={("e", "a"), ("e", "a")}) == ((), (("m", "1"),))
    assert changes([dep("1", ASLEEP)], eps, asked={("other", "a")}) == ((), ())
    assert changes([dep("1", ASLEEP)], eps, legacy=("m",)) == ((), (("m", "1"),))
    assert changes([dep("1", ASLEEP)], [endpoint("e", ("a", "1", False))]) == ((), (("m", "1"),))


def test_a_sleepers_route_answers_503_so_its_first_request_wakes_it() -> None:
    routes = endpoint_routes(endpoint("e", ("a", "1", True)), {"m": [dep("1", ASLEEP)]})
    assert routes.entities[0].target is None  # the gateway's 503 with Retry-After (and the wake)


def test_legacy_serving_sleeps_only_with_its_models_setting_and_wakes_on_a_request_after_sleeping() -> None:
    long_ago = {"awake_since": {("m", "1"): 0.0}, "legacy": ("m",)}
    assert changes([dep("1")], [], **long_ago) == ((), ())
    assert changes([dep("1")], [], legacy_scalable=("m",), **long_ago) == ((("m", "1"),), ())
    # Shared with an endpoint entity that does not scale to zero: awake.
    assert changes([dep("1")], [endpoint("e", ("a", "1", False))], legacy_scalable=("m",), **long_ago) == ((), ())
    asleep = {"legacy": ("m",), "legacy_scalable": ("m",), "asleep_since": {("m", "1"): NOW - 10}}
    assert changes([dep("1", ASLEEP)], [], last_seen={("m", "1"): NOW - 11}, **asleep) == ((), ())
    assert changes([dep("1", ASLEEP)], [], last_seen={("m", "1"): NOW - 9}, **asleep) == ((), (("m", "1"),))
    # The setting turned off: awake at once.
    assert changes([dep("1", ASLEEP)], [], legacy=("m",)) == ((), (("m", "1"),))
