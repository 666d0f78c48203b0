"""Resolving a logged request to model, version and route; histograms; the saved form."""

from __future__ import annotations

import json

from supervisor.metrics.accesslog import Access, Position, parse_line
from supervisor.metrics.series import (
    BUCKETS,
    CLIENT_CLOSED_REQUESTS,
    MetricsState,
    RouteKey,
    resolve,
    split_uri,
)
from supervisor.naming import upstream_name
from supervisor.store import READY, Deployment


def access(uri: str, target: str, status: int = 200, seconds: float = 0.004, at: float = 1000.0) -> Access:
    return Access(at=at, uri=uri, status=status, seconds=seconds, target=target)


def test_parse_line_accepts_only_our_lines() -> None:
    line = '{"t":1700000000.123,"u":"/model/a b/1/invocations","s":200,"d":0.003,"x":"ms_abc"}'
    assert parse_line(line) == Access(1700000000.123, "/model/a b/1/invocations", 200, 0.003, "ms_abc")
    assert parse_line("garbage") is None
    assert parse_line('{"t":1}') is None


def test_split_uri_keeps_slashes_in_names() -> None:
    assert split_uri("/model/a/b/Production/invocations") == ("a/b", "Production")
    assert split_uri("/model/x/invocations") is None
    assert split_uri("/api/2.0/x") is None
    # The Open Inference Protocol's infer path counts for the same route.
    assert split_uri("/v2/models/a/versions/b/versions/@best/infer") == ("a/versions/b", "@best")
    assert split_uri("/v2/models/a/versions/1") is None
    assert split_uri("/v2/models/a/infer") is None


def test_resolve_by_upstream_then_by_store() -> None:
    deps = {"m": [Deployment("m", "1", READY, stage="Production", aliases=["best"]), Deployment("m", "2", READY)]}
    ups = {upstream_name("m", "2"): ("m", "2")}
    assert resolve(access("/model/m/2/invocations", upstream_name("m", "2")), ups, deps) == RouteKey("m", "2", "2")
    # Routed through a stage with an upstream the store no longer knows: resolved by the stage.
    assert resolve(access("/model/m/production/invocations", "pending"), ups, deps) == RouteKey("m", "1", "Production")
    assert resolve(access("/model/m/@best/invocations", "pending"), ups, deps) == RouteKey("m", "1", "@best")
    assert resolve(access("/model/m/7/invocations", "pending"), ups, deps) == RouteKey("m", "7", "7")
    assert resolve(access("/model/m/7/invocations", ""), ups, deps) is None


def test_histogram_timeline_and_round_trip() -> None:
    state = MetricsState(position=Position(5, 99))
    key = RouteKey("m", "1", "1")
    state.observe(key, access("/model/m/1/invocations", "x", seconds=0.004, at=1000.0))
    state.observe(key, access("/model/m/1/invocations", "x", status=400, seconds=0.3, at=1001.0))
    state.observe(key, access("/model/m/1/invocations", "x", status=503, seconds=99, at=1012.0))
    state.observe(None, access("/model/zz/1/invocations", ""))
    stats = state.routes[key]
    assert stats.buckets[0] == 1 and stats.buckets[BUCKETS.index(0.5)] == 1 and stats.buckets[-1] == 1
    assert stats.count == 3 and stats.errors == 2 and state.unrouted == 1
    assert state.timeline[("m", "1")] == {1_000_000: [2, 1, 0, 0.304, 0.3, 0], 1_010_000: [1, 0, 1, 99, 99, 0]}
    back = MetricsState.from_json(state.to_json())
    assert back == state
    state.prune(1_010_000 + 3_600_000)
    assert list(state.timeline[("m", "1")]) == [1_010_000]


def test_client_closed_is_counted_apart_from_errors() -> None:
    state = MetricsState()
    key = RouteKey("m", "1", "1")
    for status in (200, 499, 499, 404, 502):
        state.observe(key, access("/model/m/1/invocations", "x", status=status, at=1000.0))
    stats = state.routes[key]
    assert stats.count == 5 and stats.client_closed == 2 and stats.errors == 2
    assert stats.codes["499"] == 2  # still one of the requests, by its own code
    assert state.timeline[("m", "1")][1_000_000][:3] == [5, 1, 1]
    assert state.timeline[("m", "1")][1_000_000][CLIENT_CLOSED_REQUESTS] == 2
    assert state.timeline_of("m")[1_000_000][CLIENT_CLOSED_REQUESTS] == 2


def test_points_saved_before_client_closed_read_as_zero() -> None:
    raw = {"routes": [], "timeline": [["m", "1", {"1000000": [3, 1, 0, 0.3, 0.2]}]], "unrouted": 0, "position": [0, 0]}
    assert MetricsState.from_json(raw).timeline[("m", "1")] == {1_000_000: [3, 1, 0, 0.3, 0.2, 0]}


def test_an_endpoint_request_counts_for_the_version_that_answered_under_its_entity() -> None:
    ups = {upstream_name("m", "2"): ("m", "2")}
    line = json.dumps({"t": 1.5, "u": "/serving-endpoints/ep/invocations", "s": 200, "d": 0.003,
                       "x": upstream_name("m", "2"), "e": "ep", "n": "m-2"})
    logged = parse_line(line)
    assert logged is not None and (logged.endpoint, logged.entity) == ("ep", "m-2")
    assert resolve(logged, ups, {}) == RouteKey("m", "2", "serving-endpoints/ep/m-2")
    pending = Access(1.0, "/serving-endpoints/ep/invocations", 503, 0.001, "pending", "ep", "")
    assert resolve(pending, ups, {}) is None
