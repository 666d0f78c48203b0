"""Prometheus text, the legacy metric history, and the event markers build durations rely on."""

from __future__ import annotations

from pathlib import Path

from supervisor.metrics import exposition
from supervisor.metrics.accesslog import Access
from supervisor.metrics.exposition import deploy_durations, metric_history, prometheus_text, restarts
from supervisor.metrics.series import MetricsState, RouteKey
from supervisor.store import FAILED, MODEL_UPDATE, READY, VERSION_UPDATE, Deployment, Event

ROOT = Path(__file__).resolve().parents[3] / "supervisor"


def ev(ts: int, message: str, version: str | None = "1", kind: str = VERSION_UPDATE) -> Event:
    return Event("m", ts, kind, message, version)


EVENTS = [
    ev(1000, "Version 1 is pending deployment"),
    ev(13_000, "Version 1 is launching on port 20001"),
    ev(15_500, "Version 1 is ready and serving"),
    ev(20_000, "Scoring server of version 1 killed by SIGKILL; restarted by the model host (restart 1)"),
    ev(21_000, "Model host exited unexpectedly (killed); restarted it (restart 1)", None, MODEL_UPDATE),
    ev(30_000, "Version 2 is pending deployment", "2"),
]


def test_markers_match_what_the_reconciler_and_deployer_write() -> None:
    source = (ROOT / "reconciler.py").read_text() + (ROOT / "deployer.py").read_text()
    for mark in (exposition.PENDING_MARK, exposition.LAUNCHING_MARK, exposition.READY_MARK,
                 exposition.HOST_RESTART_MARK, exposition.VERSION_RESTART_MARK):
        assert mark in source, mark


def test_durations_and_restarts_from_events() -> None:
    assert deploy_durations(EVENTS) == {"1": (12.0, 2.5), "2": (None, None)}
    host, versions = restarts(EVENTS)
    assert host == 1 and versions == {"1": 1}


def test_prometheus_text() -> None:
    state = MetricsState()
    key = RouteKey('we"ird\nname', "1", "@a")
    state.observe(key, Access(1000.0, "/model/x/1/invocations", 200, 0.02, "u"))
    deps = [Deployment("m", "1", READY), Deployment("m", "2", FAILED)]
    text = prometheus_text(state, deps, {"m": EVENTS})
    labels = 'model="we\\"ird\\nname",version="1",route="@a"'
    assert f"modelserve_requests_total{{{labels},code=\"200\"}} 1" in text
    assert f'modelserve_request_duration_seconds_bucket{{{labels},le="0.01"}} 0' in text
    assert f'modelserve_request_duration_seconds_bucket{{{labels},le="0.025"}} 1' in text
    assert f'modelserve_request_duration_seconds_bucket{{{labels},le="+Inf"}} 1' in text
    assert f"modelserve_request_duration_seconds_sum{{{labels}}} 0.02" in text
    assert 'modelserve_version_state{model="m",version="2",state="VERSION_STATE_FAILED"} 1' in text
    assert 'modelserve_version_state{model="m",version="2",state="VERSION_STATE_READY"} 0' in text
    assert 'modelserve_version_build_seconds{model="m",version="1"} 12' in text
    assert 'modelserve_version_startup_seconds{model="m",version="1"} 2.5' in text
    assert 'modelserve_host_restarts_total{model="m"} 1' in text
    assert 'modelserve_version_restarts_total{model="m",version="1"} 1' in text
    # Every sample belongs to a declared family.
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split()[0]
            assert name in families or name.rsplit("_", 1)[0] in families, line


def test_metric_history() -> None:
    state = MetricsState()
    for at, status, secs in ((1000.0, 200, 0.01), (1001.0, 500, 0.03), (1015.0, 404, 0.002)):
        state.observe(RouteKey("m", "1", "1"), Access(at, "/model/m/1/invocations", status, secs, "u"))
    state.observe(RouteKey("m", "2", "2"), Access(1003.0, "/model/m/2/invocations", 200, 0.02, "u"))
    got = {(m["timestamp"], m["key"]): m["value"] for m in metric_history(state, "m")}
    assert got[(1_000_000, "requests")] == 3 and got[(1_000_000, "successes")] == 2
    assert got[(1_000_000, "errors_5xx")] == 1 and got[(1_010_000, "errors_4xx")] == 1
    assert got[(1_000_000, "latency_ms_avg")] == 20.0 and got[(1_000_000, "latency_ms_max")] == 30.0
    only_v2 = metric_history(state, "m", "2")
    assert {m["value"] for m in only_v2 if m["key"] == "requests"} == {1}
    assert metric_history(state, "m", start_ms=1_010_000) == [m for m in metric_history(state, "m")
                                                              if m["timestamp"] == 1_010_000]
    assert metric_history(state, "other") == []


def test_client_closed_is_not_an_error() -> None:
    state = MetricsState()
    key = RouteKey("m", "1", "1")
    for at, status in ((1000.0, 200), (1001.0, 499), (1002.0, 499), (1003.0, 404), (1004.0, 500)):
        state.observe(key, Access(at, "/model/m/1/invocations", status, 0.01, "u"))
    text = prometheus_text(state, [], {})
    labels = 'model="m",version="1",route="1"'
    assert f'modelserve_requests_total{{{labels},code="499"}} 2' in text
    assert f"modelserve_request_errors_total{{{labels}}} 2" in text
    assert f"modelserve_client_closed_requests_total{{{labels}}} 2" in text
    assert "# TYPE modelserve_client_closed_requests_total counter" in text
    got = {m["key"]: m["value"] for m in metric_history(state, "m")}
    assert got["requests"] == 5 and got["client_closed"] == 2
    assert got["errors_4xx"] == 1 and got["errors_5xx"] == 1 and got["successes"] == 1


def test_replica_counts_only_for_a_replicating_runtime() -> None:
    assert "modelserve_version_replicas" not in prometheus_text(MetricsState(), [], {})
    text = prometheus_text(MetricsState(), [], {}, {("m", "2"): 2, ("m", "1"): 0})
    assert "# TYPE modelserve_version_replicas gauge" in text
    lines = [line for line in text.splitlines() if line.startswith("modelserve_version_replicas{")]
    assert lines == ['modelserve_version_replicas{model="m",version="1"} 0',
                     'modelserve_version_replicas{model="m",version="2"} 2']
