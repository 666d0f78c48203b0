"""Legacy serving's scale to zero over HTTP: ``/api/2.0/modelserve/served-models/get-scale-to-zero``
and ``update-scale-to-zero``, beside the box settings and in the same shapes.

The legacy API has no such field, so it is a setting of the served model, like its box: READ
shows it, MANAGE changes it (a sleeping model answers its first request late, which is the
owner's choice to make). It applies to every version legacy serving runs for the model, with the
same idle time and the same wake-up as a serving endpoint's entity (supervisor/idleplan.py).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from supervisor.api.auth import caller
from supervisor.api.body import json_body
from supervisor.api.errors import ApiError
from supervisor.api.params import allowed_model, ctx, model_exists, sign_in_first
from supervisor.reconciler import send_wake
from supervisor.store import MODEL_UPDATE

PREFIX = "/api/2.0/modelserve/served-models"

bp = Blueprint("scaling", __name__, url_prefix=PREFIX)
sign_in_first(bp)


def _answer(name: str) -> Response:
    settings, store, _, _ = ctx()
    return jsonify({"registered_model_name": name, "scale_to_zero_enabled": name in store.scale_to_zero_models(),
                    "idle_seconds": settings.scale_to_zero_idle_seconds})


def _known(name: str) -> None:
    _, store, registry, _ = ctx()
    if not store.is_enabled(name) and not model_exists(registry, name):
        raise ApiError("RESOURCE_DOES_NOT_EXIST", f"Registered model '{name}' does not exist")


@bp.get("/get-scale-to-zero")
def get_scale_to_zero() -> Response:
    name = allowed_model(dict(request.args.items()), "read")
    _known(name)
    return _answer(name)


@bp.post("/update-scale-to-zero")
def update_scale_to_zero() -> Response:
    settings, store, _, _ = ctx()
    body = json_body()
    name = allowed_model(body, "manage")
    unknown = sorted(set(body) - {"registered_model_name", "scale_to_zero_enabled"})
    if unknown:
        raise ApiError("INVALID_PARAMETER_VALUE", f"Unknown field(s): {', '.join(unknown)}"[:300])
    enabled = body.get("scale_to_zero_enabled")
    if not isinstance(enabled, bool):
        raise ApiError("INVALID_PARAMETER_VALUE", "scale_to_zero_enabled must be true or false")
    _known(name)
    if len(name) > 100:
        raise ApiError("INVALID_PARAMETER_VALUE", "Scale to zero is available for model names of up to 100 characters")
    if enabled != (name in store.scale_to_zero_models()):
        store.set_scale_to_zero(name, enabled)
        store.add_event(name, MODEL_UPDATE, f"Scale to zero {'on' if enabled else 'off'}, set by {caller().username}")
        send_wake(settings)
    return _answer(name)
