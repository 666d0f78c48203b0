"""The legacy Databricks serving API ("Serving V1"), same paths and JSON as clients already send.

Served both under ``/api/2.0/preview/mlflow/endpoints`` (REST clients) and under
``/ajax-api/2.0/preview/mlflow/endpoints`` (what the Databricks UI called). Handlers only read
the store and the runtime, or record an intent (enable/disable) and wake the reconciler: the
reconciler alone changes what runs.

Every handler first asks ``Access`` (supervisor/auth/): the caller must be known (401), and hold
MANAGE on the model to enable or disable it, READ to see anything about it (403); ``list`` shows
only the models the caller may read. Permission comes before existence, so a caller without
access cannot learn which models exist or are served.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from supervisor.api.auth import access, caller
from supervisor.api.boxes import box_json
from supervisor.api.errors import ApiError
from supervisor.api.params import allowed_model as _allowed_model
from supervisor.api.params import ctx as _ctx
from supervisor.api.params import model_exists as _model_exists
from supervisor.api.params import params as _params
from supervisor.api.params import required as _required
from supervisor.api.params import sign_in_first
from supervisor.auth.access import Need
from supervisor.deployer import build_log_path
from supervisor.metrics.exposition import load_state, metric_history
from supervisor.reconciler import send_wake
from supervisor.registry import RegistryUnavailable
from supervisor.status import endpoint_status, version_aliases, version_status
from supervisor.store import MODEL_UPDATE

PREFIXES = ("/api/2.0/preview/mlflow/endpoints", "/ajax-api/2.0/preview/mlflow/endpoints")
MAX_LOG_BYTES = 200_000


def _served_model(params: dict[str, Any], need: Need = "read") -> str:
    """The model name, which must be served; else the error the legacy API gave."""
    _, store, registry, _ = _ctx()
    name = _allowed_model(params, need)
    if store.is_enabled(name):
        return name
    try:
        exists = registry.get_model(name) is not None
    except RegistryUnavailable:
        exists = True
    if not exists:
        raise ApiError("RESOURCE_DOES_NOT_EXIST", f"Registered model '{name}' does not exist")
    raise ApiError("INVALID_PARAMETER_VALUE", f"Model serving is not enabled for registered model '{name}'")


def make_blueprint(prefix: str) -> Blueprint:
    bp = Blueprint("legacy_" + prefix.split("/")[1].replace("-", "_"), __name__, url_prefix=prefix)

    sign_in_first(bp)

    @bp.post("/enable")
    def enable() -> Response:
        settings, store, registry, _ = _ctx()
        params = _params()
        if "registered_model_name" not in params and "experiment_id" in params:
            raise ApiError("INVALID_PARAMETER_VALUE", "Serving by experiment_id is not supported; "
                                                      "pass registered_model_name")
        name = _allowed_model(params, "manage")
        if not _model_exists(registry, name):
            raise ApiError("RESOURCE_DOES_NOT_EXIST", f"Registered model '{name}' does not exist")
        if store.enable(name):
            store.add_event(name, MODEL_UPDATE, "Serving enabled")
        send_wake(settings)
        return jsonify({})

    @bp.post("/disable")
    def disable() -> Response:
        settings, store, _, _ = _ctx()
        name = _served_model(_params(), "manage")
        if store.disable(name):
            store.add_event(name, MODEL_UPDATE, "Serving disabled")
        send_wake(settings)
        return jsonify({})

    @bp.get("/get-status")
    def get_status() -> Response:
        settings, store, _, runtime = _ctx()
        name = _served_model(_params())
        status = endpoint_status(store, runtime, name)
        status["box"] = box_json(store, settings, name)  # beyond the legacy shape: what confines it
        return jsonify({"endpoint_status": status})

    @bp.get("/list")
    def list_endpoints() -> Response:
        _, store, _, runtime = _ctx()
        who = caller()
        readable = [m for m in store.enabled_models() if access().allowed(who, m, "read")]
        return jsonify({"endpoints": [endpoint_status(store, runtime, m) for m in readable]})

    @bp.get("/list-versions")
    def list_versions() -> Response:
        _, store, _, _ = _ctx()
        name = _served_model(_params())
        return jsonify({"endpoint_versions": [version_status(d) for d in store.deployments(name)]})

    @bp.get("/list-version-aliases")
    def list_version_aliases() -> Response:
        _, store, _, _ = _ctx()
        name = _served_model(_params())
        return jsonify({"aliases": version_aliases(store, name)})

    @bp.route("/get-version-logs", methods=["GET", "POST"])
    def get_version_logs() -> Response:
        settings, store, _, runtime = _ctx()
        params = _params()
        name = _served_model(params)
        version = _required(params, "endpoint_version_name")
        if store.deployment(name, version) is None:
            raise ApiError("RESOURCE_DOES_NOT_EXIST", f"Version '{version}' of model '{name}' is not served")
        build = build_log_path(settings, name, version)
        text = build.read_text(errors="replace")[-MAX_LOG_BYTES:] if build.exists() else ""
        served = runtime.version_log(name, version, MAX_LOG_BYTES)
        logs = f"=== build ===\n{text}\n=== scoring server ===\n{served}"
        return jsonify({"logs": logs})

    @bp.get("/get-metric-history")
    def get_metric_history() -> Response:
        """Per-bucket request figures (``STEP_MS`` buckets, the last hour) from the gateway's log."""
        _, store, _, _ = _ctx()
        params = _params()
        name = _served_model(params)
        bounds = {}
        for key in ("start_timestamp", "end_timestamp"):
            if params.get(key) not in (None, ""):
                try:
                    bounds[key] = int(params[key])
                except (TypeError, ValueError):
                    raise ApiError("INVALID_PARAMETER_VALUE", f"'{key}' must be milliseconds since the epoch") from None
        version = params.get("endpoint_version_name")
        metrics = metric_history(load_state(store), name, str(version) if version not in (None, "") else None,
                                 bounds.get("start_timestamp"), bounds.get("end_timestamp"))
        return jsonify({"metrics": metrics})

    @bp.get("/get-event-history")
    def get_event_history() -> Response:
        _, store, _, _ = _ctx()
        params = _params()
        name = _allowed_model(params, "read")
        found = store.events(name)
        if not found:
            _served_model(params)
        return jsonify({"events": [e.to_json() for e in found]})

    return bp
