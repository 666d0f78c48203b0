"""A request's JSON body, read one way everywhere: a handler never sees a form, a list or text
where it expects an object (and a cross-site form, which cannot be JSON, is refused)."""

from __future__ import annotations

from typing import Any

from flask import request

from supervisor.api.errors import ApiError


def json_body() -> dict[str, Any]:
    """The JSON object in the body ({} without a body); anything else is MALFORMED_REQUEST."""
    if not request.data:
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError("MALFORMED_REQUEST", "The request body must be a JSON object")
    return body
