"""The box of a served model over HTTP: ``/api/2.0/modelserve/served-models/get-box`` and
``update-box``, beside the legacy API's shapes (a flat JSON object named by
``registered_model_name``, Databricks-style errors).

READ on the model shows its box; only MANAGE changes it, because the box is the boundary that
keeps the model's code (which EDIT users choose) away from the network and the machine. A box can
be set before serving is enabled, so the first start already runs in it. A change is stored with
who made it, recorded as an event and wakes the reconciler, whose next tick hands the runtime the
new ``Box`` (which restarts the host in it). The change is read from the JSON body only, never
from the query string: a cross-site page can send a form, but not ``application/json`` without
the preflight this API never grants.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from supervisor.api.auth import caller
from supervisor.api.body import json_body
from supervisor.api.errors import ApiError
from supervisor.api.params import allowed_model, ctx, model_exists, sign_in_first
from supervisor.isolation import boxes as box_plan
from supervisor.isolation.box import MiB
from supervisor.isolation.changes import BadBoxChange, parse_change
from supervisor.reconciler import send_wake
from supervisor.settings import Settings
from supervisor.store import MODEL_UPDATE, BoxSettings, Store, UidRangeExhausted

PREFIX = "/api/2.0/modelserve/served-models"
BOX_API = PREFIX + "/update-box"


def _using_defaults(own: BoxSettings) -> list[str]:
    out = [] if own.network else ["network_access"]
    return out + [k for k in ("memory_mb", "cpus", "max_processes", "replicas") if getattr(own, k) is None]


def box_json(store: Store, settings: Settings, model: str) -> dict[str, Any]:
    """The effective box of ``model`` and which of its settings are the defaults."""
    own = store.box_settings(model)
    box, problem = box_plan.limits_box(settings, own), None
    if store.is_enabled(model):  # a model that is not served gets no uid yet: reading must not use one up
        try:
            box = box_plan.box_for(store, settings, model)
        except UidRangeExhausted as exc:
            problem = str(exc)
    root = box_plan.running_as_root()
    out: dict[str, Any] = {
        "network_access": box.network,
        "memory_mb": box.memory_bytes // MiB,
        "cpus": box.cpus,
        "max_processes": box.pids,
        "tmp_mb": box.tmp_bytes // MiB,
        "replicas": box.replicas,  # copies of each version the swarm runtime runs; other runtimes run one
        # own_uid: the supervisor is root and gives the model a uid of its own (null until it is
        # first served); user_namespace: it runs as the supervisor's user inside a sandbox.
        "identity": "own_uid" if root else "user_namespace",
        "uid": box.uid,
        "using_defaults": _using_defaults(own),
    }
    if problem:
        out["identity_error"] = problem  # the reconciler does not start it; the events say so too
    if own.updated:
        out["update_time"] = own.updated
        out["updated_by"] = own.updated_by
    return out


_SHOWN = {"memory_mb": ("memory", "{:d} MiB"), "cpus": ("CPUs", "{:g}"),
          "max_processes": ("max processes", "{:d}"), "replicas": ("replicas", "{:d}")}


def _describe(change: dict[str, Any]) -> str:
    parts = []
    for key, value in change.items():
        if key == "network":
            parts.append("network " + ("on" if value else "off"))
            continue
        label, form = _SHOWN[key]
        parts.append(f"{label} back to the default" if value is None else f"{label} {form.format(value)}")
    return ", ".join(parts)


def _known_model(name: str) -> None:
    _, store, registry, _ = ctx()
    if not store.is_enabled(name) and not model_exists(registry, name):
        raise ApiError("RESOURCE_DOES_NOT_EXIST", f"Registered model '{name}' does not exist")


bp = Blueprint("boxes", __name__, url_prefix=PREFIX)


sign_in_first(bp)


@bp.get("/get-box")
def get_box() -> Response:
    settings, store, _, _ = ctx()
    name = allowed_model(dict(request.args.items()), "read")
    _known_model(name)
    return jsonify({"registered_model_name": name, "box": box_json(store, settings, name)})


@bp.post("/update-box")
def update_box() -> Response:
    settings, store, _, _ = ctx()
    body = json_body()
    name = allowed_model(body, "manage")
    try:
        change = parse_change(body)
    except BadBoxChange as exc:
        raise ApiError("INVALID_PARAMETER_VALUE", str(exc)) from exc
    _known_model(name)
    if change:
        who = caller().username
        store.update_box_settings(name, change, who)
        store.add_event(name, MODEL_UPDATE, f"Box changed by {who}: {_describe(change)}")
        send_wake(settings)
    return jsonify({"registered_model_name": name, "box": box_json(store, settings, name)})
