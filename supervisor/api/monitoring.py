"""``GET /metrics``: Prometheus text, computed at each scrape from what the store holds.

Any API worker answers the same thing because nothing is kept in a worker's memory: request
aggregates are saved by the reconciler's collector, states and events are in the store.
"""

from __future__ import annotations

from collections import defaultdict

from flask import Blueprint, Response, current_app

from supervisor.api import auth
from supervisor.metrics.exposition import load_state, prometheus_text
from supervisor.runtime.base import Runtime
from supervisor.store import Event, Store

bp = Blueprint("monitoring", __name__)


def replica_counts(runtime: Runtime, models: list[str]) -> dict[tuple[str, str], int] | None:
    """Running replicas per (model, version), when the runtime replicates (None otherwise)."""
    if runtime.name != "swarm":
        return None
    out: dict[tuple[str, str], int] = {}
    for model in models:
        host = runtime.host_state(model)
        for version, found in (host.replicas if host is not None else {}).items():
            out[(model, version)] = sum(r["state"] == "running" for r in found)
    return out


@bp.get("/metrics")
def metrics() -> Response:
    store: Store = current_app.extensions["modelserve"]["store"]
    # A scraper signs in like any client (a token); it sees the models its user may read.
    who = auth.caller()
    readable = {m for m in set(store.enabled_models()) | {d.model for d in store.deployments()}
                if auth.access().allowed(who, m, "read")}
    deployments = [d for d in store.deployments() if d.model in readable]
    models = sorted(readable)
    events: dict[str, list[Event]] = defaultdict(list)
    for model in models:
        events[model] = store.events(model, limit=100_000)
    state = load_state(store)  # a fresh copy per scrape: narrowing it changes nothing stored
    state.routes = {k: v for k, v in state.routes.items() if k.model in readable}
    runtime = current_app.extensions["modelserve"]["runtime"]
    text = prometheus_text(state, deployments, events, replica_counts(runtime, models))
    return Response(text, mimetype="text/plain", content_type="text/plain; version=0.0.4; charset=utf-8")
