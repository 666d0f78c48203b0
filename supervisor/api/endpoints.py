"""The serving endpoints API (Databricks' successor of legacy serving), as both clients call it.

``/api/2.0/serving-endpoints`` with and without the trailing slash (MLflow's deployments client
sends one, the SDK none), every answer a JSON object (MLflow parses even DELETE's), and errors
with the ``error_code`` both clients map to their exception classes. Handlers validate, check
rights, and record the wish in the store; the reconciler alone makes it run (and decides when a
config update is done), so a refused request changes nothing and an accepted one is visible to
every API worker at once.

Rights: CAN_VIEW reads an endpoint, its logs and permissions; CAN_MANAGE changes it; CAN_QUERY
(checked by the gateway) scores it. Putting a registered model into an endpoint needs READ on
the model; one the caller cannot read is answered exactly as one that does not exist.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from supervisor.api.auth import access, caller
from supervisor.api.body import json_body
from supervisor.api.errors import ApiError
from supervisor.api.openapi import document as openapi_document
from supervisor.api.params import ctx, no_such_model, sign_in_first
from supervisor.auth.access import ENDPOINT_LEVELS, EndpointLevel, Principal
from supervisor.capture.export import FORMATS, jsonl, parquet
from supervisor.deployer import build_log_path
from supervisor.endpoints.capture import check_change
from supervisor.endpoints.config import (
    ConfigError,
    check_name,
    missing_reason,
    parse_config,
    resolve,
    tags_after,
)
from supervisor.endpoints.ratelimits import parse_ai_gateway, parse_rate_limits
from supervisor.endpoints.view import detailed, find_entity, summary
from supervisor.metrics.exposition import load_state, prometheus_text
from supervisor.plan import entity_deployment
from supervisor.reconciler import send_wake
from supervisor.registry import RegistryUnavailable
from supervisor.store import Deployment, ServingEndpoint, now_ms

PREFIX = "/api/2.0/serving-endpoints"
PERMISSIONS_PREFIX = "/api/2.0/permissions/serving-endpoints"
INFERENCE_TABLE = "/api/2.0/modelserve/serving-endpoints/<name>/inference-table"
MAX_LOG_BYTES = 200_000
LEVEL_TEXT = {"CAN_VIEW": "Can view the endpoint, its logs and its permissions",
              "CAN_QUERY": "Can view and query the endpoint",
              "CAN_MANAGE": "Can view, query, update and delete the endpoint and change its permissions"}

bp = Blueprint("serving_endpoints", __name__)
sign_in_first(bp)


def _invalid(exc: ConfigError) -> ApiError:
    return ApiError(exc.error_code, exc.message)


def _not_found(name: str) -> ApiError:
    return ApiError("RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist.")


def _deps() -> dict[str, list[Deployment]]:
    out: dict[str, list[Deployment]] = defaultdict(list)
    for d in ctx()[1].deployments():
        out[d.model].append(d)
    return out


def _endpoint(name: str, need: EndpointLevel) -> tuple[ServingEndpoint, str]:
    """The endpoint and the caller's level on it, which must be at least ``need`` (else 403)."""
    ep = ctx()[1].endpoint(name)
    if ep is None:
        raise _not_found(name)
    who = caller()
    access().require_endpoint(who, ep.id, ep.name, need)
    return ep, access().endpoint_level(who, ep.id) or need


def _body_config(raw: Any, name: str, who: Principal) -> dict[str, Any]:
    """The validated config, each entity's model readable by the caller and its version there."""
    try:
        cfg = parse_config(raw, name)
    except ConfigError as exc:
        raise _invalid(exc) from None
    registry = ctx()[2]
    at = now_ms()
    for e in cfg["served_entities"]:
        model = e["entity_name"]
        if not access().allowed(who, model, "read"):
            raise no_such_model(model)
        try:
            rm = registry.get_model(model)
        except RegistryUnavailable as exc:
            raise ApiError("TEMPORARILY_UNAVAILABLE", f"The model registry is unreachable: {exc}") from exc
        if rm is None:
            raise no_such_model(model)
        if resolve(rm, e["entity_version"]) is None:
            raise ApiError("RESOURCE_DOES_NOT_EXIST", missing_reason(rm, model, e["entity_version"]))
        e.update(creator=who.username, creation_timestamp=at)
    return cfg


_UNSUPPORTED = ("email_notifications",)


def _detailed(ep: ServingEndpoint, level: str) -> dict[str, Any]:
    """The endpoint as the clients read it, its rate limits as the AI Gateway config shows them."""
    out = detailed(ep, _deps(), level)
    limits = ctx()[1].rate_limits().get(ep.id)
    if limits:
        out["ai_gateway"] = {"rate_limits": limits}
    return out


def _body_limits(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The rate limits a create body gives, in either shape (not both)."""
    try:
        legacy = parse_rate_limits(body.get("rate_limits"))
        gateway = parse_ai_gateway(body["ai_gateway"]) if body.get("ai_gateway") is not None else []
    except ConfigError as exc:
        raise _invalid(exc) from None
    if legacy and gateway:
        raise ApiError("INVALID_PARAMETER_VALUE", "Give rate_limits or ai_gateway.rate_limits, not both")
    return legacy or gateway


@bp.post(PREFIX)
@bp.post(PREFIX + "/")
def create() -> Response:
    settings, store, _, _ = ctx()
    who = caller()
    body = json_body()
    try:
        name = check_name(body.get("name"))
        tags = tags_after([], body.get("tags"), None)
    except ConfigError as exc:
        raise _invalid(exc) from None
    for key in _UNSUPPORTED:
        if body.get(key):
            raise ApiError("INVALID_PARAMETER_VALUE", f"'{key}' is not supported by this server")
    cfg = _body_config(body.get("config"), name, who)
    limits = _body_limits(body)
    # Nginx compares route keys regardless of case: two names equal but for case cannot both route.
    if any(ep.name.casefold() == name.casefold() for ep in store.endpoints()):
        raise ApiError("RESOURCE_ALREADY_EXISTS", f"Endpoint with name '{name}' already exists.", 409)
    ep = store.create_endpoint(uuid.uuid4().hex, name, who.username, cfg, tags, bool(body.get("route_optimized")))
    if ep is None:
        raise ApiError("RESOURCE_ALREADY_EXISTS", f"Endpoint with name '{name}' already exists.", 409)
    if limits:
        store.set_rate_limits(ep.id, limits)
    send_wake(settings)
    return jsonify(_detailed(ep, "CAN_MANAGE"))


@bp.get(PREFIX)
@bp.get(PREFIX + "/")
def list_endpoints() -> Response:
    store = ctx()[1]
    who = caller()
    deps = _deps()
    shown = [summary(ep, deps) for ep in store.endpoints() if access().endpoint_allowed(who, ep.id, "CAN_VIEW")]
    return jsonify({"endpoints": shown})


@bp.get(PREFIX + "/<name>")
def get(name: str) -> Response:
    ep, level = _endpoint(name, "CAN_VIEW")
    return jsonify(_detailed(ep, level))


@bp.delete(PREFIX + "/<name>")
def delete(name: str) -> Response:
    settings, store, _, _ = ctx()
    _endpoint(name, "CAN_MANAGE")
    if not store.delete_endpoint(name):
        raise _not_found(name)
    send_wake(settings)
    return jsonify({})


@bp.put(PREFIX + "/<name>/config")
def update_config(name: str) -> Response:
    settings, store, _, _ = ctx()
    ep, level = _endpoint(name, "CAN_MANAGE")
    cfg = _body_config(json_body(), name, caller())
    try:
        check_change((ep.config or ep.pending_config or {}).get("auto_capture_config"), cfg.get("auto_capture_config"))
    except ConfigError as exc:
        raise _invalid(exc) from None
    if not store.begin_config_update(name, cfg):
        if store.endpoint(name) is None:
            raise _not_found(name)
        raise ApiError("RESOURCE_CONFLICT", f"Endpoint '{name}' has a config update in progress; another update "
                                            "can not be made until it completes or fails", 409)
    send_wake(settings)
    updated = store.endpoint(name)
    if updated is None:
        raise _not_found(name)
    return jsonify(_detailed(updated, level))


def _put_limits(name: str, parse: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> Response:
    settings, store, _, _ = ctx()
    ep, _ = _endpoint(name, "CAN_MANAGE")
    try:
        limits = parse(json_body())
    except ConfigError as exc:
        raise _invalid(exc) from None
    store.set_rate_limits(ep.id, limits)
    send_wake(settings)
    return jsonify({"rate_limits": limits})


@bp.put(PREFIX + "/<name>/rate-limits")
def put_rate_limits(name: str) -> Response:
    """Replaces the endpoint's rate limits (``[]`` removes them); the gateway enforces them from
    the reconciler's next tick, within a second or so."""
    def parse(body: dict[str, Any]) -> list[dict[str, Any]]:
        unknown = sorted(set(body) - {"rate_limits", "name"})
        if unknown:
            raise ConfigError(f"Unknown field(s): {', '.join(unknown)}"[:300])
        return parse_rate_limits(body.get("rate_limits", []))
    return _put_limits(name, parse)


@bp.put(PREFIX + "/<name>/ai-gateway")
def put_ai_gateway(name: str) -> Response:
    return _put_limits(name, lambda body: parse_ai_gateway({k: v for k, v in body.items() if k != "name"}))


@bp.patch(PREFIX + "/<name>/tags")
def patch_tags(name: str) -> Response:
    store = ctx()[1]
    ep, _ = _endpoint(name, "CAN_MANAGE")
    body = json_body()
    try:
        tags = tags_after(ep.tags, body.get("add_tags"), body.get("delete_tags"))
    except ConfigError as exc:
        raise _invalid(exc) from None
    store.set_endpoint_tags(name, tags)
    return jsonify({"tags": tags})


def _entity_version(ep: ServingEndpoint, entity: str) -> tuple[dict[str, Any], bool, str | None]:
    found = find_entity(ep, entity)
    if found is None:
        raise ApiError("RESOURCE_DOES_NOT_EXIST", f"Served entity '{entity}' does not exist in endpoint '{ep.name}'.")
    e, failed = found
    d = entity_deployment(_deps().get(e["entity_name"], ()), e["entity_version"])
    version = d.version if d is not None else (e["entity_version"] if e["entity_version"].isdigit() else None)
    return e, failed, version


@bp.get(PREFIX + "/<name>/served-models/<entity>/build-logs")
def build_logs(name: str, entity: str) -> Response:
    settings = ctx()[0]
    ep, _ = _endpoint(name, "CAN_VIEW")
    e, failed, version = _entity_version(ep, entity)
    text = f"Config update failed: {ep.update_message}\n" if failed and ep.update_message else ""
    if version is not None:
        path = build_log_path(settings, e["entity_name"], version)
        text += path.read_text(errors="replace")[-MAX_LOG_BYTES:] if path.exists() else ""
    return jsonify({"logs": text})


@bp.get(PREFIX + "/<name>/served-models/<entity>/logs")
def server_logs(name: str, entity: str) -> Response:
    runtime = ctx()[3]
    ep, _ = _endpoint(name, "CAN_VIEW")
    e, _, version = _entity_version(ep, entity)
    return jsonify({"logs": runtime.version_log(e["entity_name"], version, MAX_LOG_BYTES) if version else ""})


@bp.get(PREFIX + "/<name>/metrics")
def export_metrics(name: str) -> Response:
    """Prometheus text of this endpoint's requests (by entity, version and status), read from the
    same aggregates as ``/metrics``: the SDK's ``export_metrics`` hands the text on as it is."""
    ep, _ = _endpoint(name, "CAN_VIEW")
    state = load_state(ctx()[1])  # a fresh copy: narrowing it changes nothing stored
    prefix = f"serving-endpoints/{ep.name}/"
    state.routes = {k: v for k, v in state.routes.items() if k.route.startswith(prefix)}
    return Response(prometheus_text(state, [], {}), content_type="text/plain; version=0.0.4; charset=utf-8")


@bp.get(INFERENCE_TABLE)
def inference_table(name: str) -> Response:
    """The endpoint's inference table (``auto_capture_config``) as JSON Lines (streamed) or
    Parquet. Needs CAN_MANAGE: the rows hold whatever callers sent and the model answered."""
    ep, _ = _endpoint(name, "CAN_MANAGE")
    fmt = request.args.get("format", "jsonl")
    if fmt not in FORMATS:
        raise ApiError("INVALID_PARAMETER_VALUE", f"format must be one of {', '.join(FORMATS)}")
    try:
        since = int(request.args.get("since_ms", "0"))
        limit = int(request.args["limit"]) if "limit" in request.args else None
    except ValueError:
        raise ApiError("INVALID_PARAMETER_VALUE", "since_ms and limit must be integers") from None
    if since < 0 or (limit is not None and limit < 1):
        raise ApiError("INVALID_PARAMETER_VALUE", "since_ms must be >= 0 and limit >= 1")
    rows = ctx()[1].inference_rows(ep.id, since, limit)
    filename = f'attachment; filename="{ep.name}_payload.{fmt}"'
    if fmt == "parquet":
        return Response(parquet(rows), content_type=FORMATS[fmt], headers={"Content-Disposition": filename})
    return Response(stream_with_context(jsonl(rows)), content_type=FORMATS[fmt],
                    headers={"Content-Disposition": filename})


@bp.get(PREFIX + "/<name>/openapi")
def endpoint_openapi(name: str) -> Response:
    """The endpoint's query API as an OpenAPI document: its scoring path with this server's
    request formats and errors (the models' own signatures are not turned into schemas)."""
    ep, _ = _endpoint(name, "CAN_VIEW")
    doc = openapi_document()
    score = doc["paths"]["/serving-endpoints/{name}/invocations"]["post"]
    out = {"openapi": doc["openapi"], "info": {"title": f"Serving endpoint {ep.name}",
                                                "version": str(ep.config_version or 0)},
           "servers": [{"url": request.host_url.rstrip("/")}], "security": doc["security"],
           "paths": {f"/serving-endpoints/{ep.name}/invocations": {"post": {
               k: v for k, v in score.items() if k != "parameters"}}},
           "components": doc["components"]}
    return jsonify(out)


# --- permissions, keyed by the endpoint's id as the SDK calls them ------------------------
def _by_id(endpoint_id: str, need: EndpointLevel) -> ServingEndpoint:
    ep = ctx()[1].endpoint_by_id(endpoint_id)
    if ep is None:
        raise ApiError("RESOURCE_DOES_NOT_EXIST", f"Serving endpoint with id '{endpoint_id}' does not exist.")
    access().require_endpoint(caller(), ep.id, ep.name, need)
    return ep


def _permissions_json(ep: ServingEndpoint) -> dict[str, Any]:
    grants = ctx()[1].endpoint_grants(ep.id)
    return {"object_id": f"/serving-endpoints/{ep.id}", "object_type": "serving-endpoint",
            "access_control_list": [
                {"user_name": user, "all_permissions": [{"permission_level": level, "inherited": False}]}
                for user, level in sorted(grants.items())]}


def _grants(body: dict[str, Any]) -> dict[str, str]:
    acl = body.get("access_control_list", [])
    if not isinstance(acl, list):
        raise ApiError("INVALID_PARAMETER_VALUE", "access_control_list must be a list")
    out: dict[str, str] = {}
    for entry in acl:
        if not isinstance(entry, dict):
            raise ApiError("INVALID_PARAMETER_VALUE", "Every access control entry must be a JSON object")
        user, level = entry.get("user_name"), entry.get("permission_level")
        if not isinstance(user, str) or not user:
            raise ApiError("INVALID_PARAMETER_VALUE", "Only user_name grants are supported (MLflow has no groups "
                                                      "or service principals)")
        if level not in ENDPOINT_LEVELS:
            raise ApiError("INVALID_PARAMETER_VALUE", f"permission_level must be one of {', '.join(ENDPOINT_LEVELS)}")
        out[user] = level
    return out


@bp.get(PERMISSIONS_PREFIX + "/<endpoint_id>")
def get_permissions(endpoint_id: str) -> Response:
    return jsonify(_permissions_json(_by_id(endpoint_id, "CAN_VIEW")))


@bp.put(PERMISSIONS_PREFIX + "/<endpoint_id>")
@bp.patch(PERMISSIONS_PREFIX + "/<endpoint_id>")
def set_permissions(endpoint_id: str) -> Response:
    ep = _by_id(endpoint_id, "CAN_MANAGE")
    grants = _grants(json_body())
    ctx()[1].set_endpoint_grants(ep.id, grants, replace=request.method == "PUT")
    return jsonify(_permissions_json(ep))


@bp.get(PERMISSIONS_PREFIX + "/<endpoint_id>/permissionLevels")
def permission_levels(endpoint_id: str) -> Response:
    _by_id(endpoint_id, "CAN_VIEW")
    return jsonify({"permission_levels": [{"permission_level": lv, "description": LEVEL_TEXT[lv]}
                                          for lv in ENDPOINT_LEVELS]})


# --- the clients' host-metadata probe -------------------------------------------------------
well_known = Blueprint("databricks_config", __name__)


@well_known.get("/.well-known/databricks-config")
def databricks_config() -> Response:
    """Asked without credentials by every client construction. A workspace id (stable for this
    data dir) keeps the clients from warning on each call; no OIDC endpoint is offered, since
    there is no OAuth here, so they stay with the token they were given."""
    digest = hashlib.sha256(str(current_app.extensions["modelserve"]["settings"].data_dir).encode()).hexdigest()
    return jsonify({"workspace_id": str(int(digest[:12], 16))})
