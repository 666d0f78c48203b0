"""``GET /metrics``: Prometheus text, computed at each scrape from what the store holds.

Any API worker answers the same thing because nothing is kept in a worker's memory: request
aggregates are saved by the reconciler's collector, states and events are in the store.
"""

from __future__ import annotations

from collections import defaultdict

from flask import Blueprint, Response, current_app

from supervisor.metrics.exposition import load_state, prometheus_text
from supervisor.store import Event, Store

bp = Blueprint("monitoring", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    store: Store = current_app.extensions["modelserve"]["store"]
    deployments = store.deployments()
    models = sorted(set(store.enabled_models()) | {d.model for d in deployments})
    events: dict[str, list[Event]] = defaultdict(list)
    for model in models:
        events[model] = store.events(model, limit=100_000)
    text = prometheus_text(load_state(store), deployments, events)
    return Response(text, mimetype="text/plain", content_type="text/plain; version=0.0.4; charset=utf-8")
