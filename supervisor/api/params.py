"""Reading a request's parameters and the model it names, shared by the legacy API and the
modelserve endpoints, so that both answer a missing name, a malformed body or a caller without
permission with the same error, checked in the same order (who, then may they, then does it exist).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request

from supervisor.api.auth import access, caller
from supervisor.api.body import json_body
from supervisor.api.errors import ApiError
from supervisor.auth.access import Need
from supervisor.registry import Registry, RegistryUnavailable
from supervisor.runtime.base import Runtime
from supervisor.settings import Settings
from supervisor.store import Store


def ctx() -> tuple[Settings, Store, Registry, Runtime]:
    ext = current_app.extensions["modelserve"]
    return ext["settings"], ext["store"], ext["registry"], ext["runtime"]


def params() -> dict[str, Any]:
    """The query string, and for POST-like methods the JSON body over it (the legacy API's way)."""
    out: dict[str, Any] = dict(request.args.items())
    if request.method in ("POST", "PUT", "PATCH"):
        out.update(json_body())
    return out


def required(values: dict[str, Any], key: str) -> str:
    value = values.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and key == "endpoint_version_name":
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ApiError("INVALID_PARAMETER_VALUE", f"Missing required parameter '{key}'")
    return value


def model_exists(registry: Registry, name: str) -> bool:
    try:
        return registry.get_model(name) is not None
    except RegistryUnavailable as exc:
        raise ApiError("TEMPORARILY_UNAVAILABLE", f"The model registry is unreachable: {exc}") from exc


def allowed_model(values: dict[str, Any], need: Need) -> str:
    """The model named in ``values``, once the caller is known and may ``need`` it."""
    who = caller()
    name = required(values, "registered_model_name")
    access().require(who, name, need)
    return name


def sign_in_first(bp: Blueprint) -> None:
    """Every request to ``bp`` answers 401 before anything else, even before a malformed body."""

    @bp.before_request
    def _authenticate() -> None:
        caller()
