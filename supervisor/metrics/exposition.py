"""What the API answers: Prometheus text for ``/metrics`` and the legacy ``get-metric-history``.

Request figures come from the aggregates the collector saved in the store; version states from
the deployments; build durations and restarts from the events, the durable record the
reconciler already writes (so they survive every restart and need no second bookkeeping).
The event markers below are the words of the messages the reconciler and the deployer write;
``tests/unit/metrics/test_exposition.py`` checks that they still do.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from supervisor.metrics.series import (
    BUCKETS,
    CLIENT_CLOSED_REQUESTS,
    ERRORS_4XX,
    ERRORS_5XX,
    REQUESTS,
    SECONDS_MAX,
    SECONDS_SUM,
    STEP_MS,
    MetricsState,
)
from supervisor.store import (
    FAILED,
    LAUNCHING,
    MODEL_UPDATE,
    PENDING,
    READY,
    VERSION_UPDATE,
    Deployment,
    Event,
    Store,
)

STATE_KEY = "metrics"
STATES = (PENDING, LAUNCHING, READY, FAILED)

PENDING_MARK = " is pending deployment"
LAUNCHING_MARK = " is launching"  # also the older events' "is launching on port N"
READY_MARK = " is ready and serving"
HOST_RESTART_MARK = "Model host exited unexpectedly"
VERSION_RESTART_MARK = "restarted by the model host"


def load_state(store: Store) -> MetricsState:
    raw = store.get_meta(STATE_KEY)
    if not raw:
        return MetricsState()
    try:
        return MetricsState.from_json(json.loads(raw))
    except (ValueError, TypeError, KeyError):
        return MetricsState()


def save_state(store: Store, state: MetricsState) -> None:
    store.set_meta(STATE_KEY, json.dumps(state.to_json(), separators=(",", ":")))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


def _num(x: float) -> str:
    return repr(float(x)) if isinstance(x, float) and not x.is_integer() else str(int(x))


def deploy_durations(events: Iterable[Event]) -> dict[str, tuple[float | None, float | None]]:
    """version -> (seconds from queued to launching, i.e. download + environment; seconds from
    launching to ready), for the latest deploy of each version."""
    marks: dict[str, dict[str, int]] = {}
    for e in sorted(events, key=lambda e: e.timestamp):
        if e.version is None or e.event_type != VERSION_UPDATE:
            continue
        m = marks.setdefault(e.version, {})
        if PENDING_MARK in e.message:
            marks[e.version] = {"pending": e.timestamp}
        elif LAUNCHING_MARK in e.message:
            m["launching"] = e.timestamp
        elif READY_MARK in e.message:
            m["ready"] = e.timestamp
    out: dict[str, tuple[float | None, float | None]] = {}
    for version, m in marks.items():
        build = (m["launching"] - m["pending"]) / 1000 if "pending" in m and "launching" in m else None
        start = (m["ready"] - m["launching"]) / 1000 if "launching" in m and "ready" in m else None
        out[version] = (build, start)
    return out


def restarts(events: Iterable[Event]) -> tuple[int, Counter[str]]:
    host, versions = 0, Counter[str]()
    for e in events:
        if e.event_type == MODEL_UPDATE and HOST_RESTART_MARK in e.message:
            host += 1
        elif e.event_type == VERSION_UPDATE and e.version and VERSION_RESTART_MARK in e.message:
            versions[e.version] += 1
    return host, versions


def prometheus_text(state: MetricsState, deployments: Sequence[Deployment],
                    events_by_model: dict[str, list[Event]],
                    replicas: dict[tuple[str, str], int] | None = None) -> str:
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    routes = sorted(state.routes.items(), key=lambda kv: (kv[0].model, kv[0].version, kv[0].route))
    family("modelserve_requests_total", "counter", "Scoring requests through the gateway, by HTTP status code.")
    for k, s in routes:
        for code, n in sorted(s.codes.items()):
            out.append(f"modelserve_requests_total{_labels(model=k.model, version=k.version, route=k.route, code=code)} {n}")
    family("modelserve_request_errors_total", "counter",
           "Scoring requests answered with a status of 400 or more, except 499 (the client closed the connection).")
    for k, s in routes:
        out.append(f"modelserve_request_errors_total{_labels(model=k.model, version=k.version, route=k.route)} {s.errors}")
    family("modelserve_client_closed_requests_total", "counter",
           "Scoring requests whose client closed the connection before the answer (status 499); not errors.")
    for k, s in routes:
        out.append(f"modelserve_client_closed_requests_total{_labels(model=k.model, version=k.version, route=k.route)} "
                   f"{s.client_closed}")
    family("modelserve_request_duration_seconds", "histogram", "Time from the request's first byte to the answer's last, at the gateway.")
    for k, s in routes:
        base = {"model": k.model, "version": k.version, "route": k.route}
        running = 0
        for bound, n in zip((*map(str, BUCKETS), "+Inf"), s.buckets, strict=True):
            running += n
            out.append(f"modelserve_request_duration_seconds_bucket{_labels(**base, le=bound)} {running}")
        out.append(f"modelserve_request_duration_seconds_sum{_labels(**base)} {_num(round(s.seconds, 6))}")
        out.append(f"modelserve_request_duration_seconds_count{_labels(**base)} {s.count}")
    family("modelserve_unrouted_requests_total", "counter", "Requests under /model/ that matched no served model version (404).")
    out.append(f"modelserve_unrouted_requests_total {state.unrouted}")

    family("modelserve_version_state", "gauge", "1 for the state each served version is in.")
    for d in deployments:
        for st in STATES:
            out.append(f"modelserve_version_state{_labels(model=d.model, version=d.version, state=st)} {int(d.state == st)}")
    if replicas is not None:
        family("modelserve_version_replicas", "gauge",
               "Replicas of a version running now (swarm runtime: its running tasks on ready nodes).")
        for (model, version), n in sorted(replicas.items()):
            out.append(f"modelserve_version_replicas{_labels(model=model, version=version)} {n}")
    family("modelserve_version_build_seconds", "gauge", "Seconds from queueing a version to launching it (download and environment build).")
    build_lines: list[str] = []
    start_lines: list[str] = []
    host_lines: list[str] = []
    version_lines: list[str] = []
    for model, events in sorted(events_by_model.items()):
        for version, (build, start) in sorted(deploy_durations(events).items()):
            if build is not None:
                build_lines.append(f"modelserve_version_build_seconds{_labels(model=model, version=version)} {_num(build)}")
            if start is not None:
                start_lines.append(f"modelserve_version_startup_seconds{_labels(model=model, version=version)} {_num(start)}")
        host, per_version = restarts(events)
        host_lines.append(f"modelserve_host_restarts_total{_labels(model=model)} {host}")
        version_lines += [f"modelserve_version_restarts_total{_labels(model=model, version=v)} {n}"
                          for v, n in sorted(per_version.items())]
    out += build_lines
    family("modelserve_version_startup_seconds", "gauge", "Seconds from launching a version's scoring server to its first passed health check.")
    out += start_lines
    family("modelserve_host_restarts_total", "counter", "Restarts of a model's host (its cluster) after it exited unexpectedly.")
    out += host_lines
    family("modelserve_version_restarts_total", "counter", "Restarts of a version's scoring server by its model host.")
    out += version_lines
    return "\n".join(out) + "\n"


def metric_history(state: MetricsState, model: str, version: str | None = None,
                   start_ms: int | None = None, end_ms: int | None = None) -> list[dict[str, Any]]:
    """The legacy ``{"metrics": [{"key", "value", "timestamp"}]}`` entries, one set per bucket."""
    out: list[dict[str, Any]] = []
    for t, p in state.timeline_of(model, version).items():
        if (start_ms is not None and t + STEP_MS <= start_ms) or (end_ms is not None and t > end_ms):
            continue
        n = int(p[REQUESTS])
        closed = int(p[CLIENT_CLOSED_REQUESTS])
        values = {
            # requests = successes + errors_4xx + errors_5xx + client_closed: a request whose
            # client left got no answer, so it is neither a success nor an error.
            "requests": n,
            "successes": n - int(p[ERRORS_4XX]) - int(p[ERRORS_5XX]) - closed,
            "errors_4xx": int(p[ERRORS_4XX]),
            "errors_5xx": int(p[ERRORS_5XX]),
            "client_closed": closed,
            "latency_ms_avg": round(p[SECONDS_SUM] / n * 1000, 3) if n else 0.0,
            "latency_ms_max": round(p[SECONDS_MAX] * 1000, 3),
        }
        out += [{"key": k, "value": v, "timestamp": t} for k, v in values.items()]
    return out
