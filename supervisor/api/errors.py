"""Databricks-style JSON errors: ``{"error_code": ..., "message": ...}`` for every failure.

Handlers are registered for our own ``ApiError`` and for every HTTP error Flask raises (unknown
path, wrong method, malformed body), so a client never sees an HTML page or a stack trace.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from supervisor.auth.access import Forbidden, Unauthenticated
from supervisor.auth.mlflow_users import AuthBackendError

log = logging.getLogger("modelserve.api")

STATUS = {
    "INVALID_PARAMETER_VALUE": 400,
    "BAD_REQUEST": 400,
    "MALFORMED_REQUEST": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "RESOURCE_DOES_NOT_EXIST": 404,
    "ENDPOINT_NOT_FOUND": 404,
    "TEMPORARILY_UNAVAILABLE": 503,
    "INTERNAL_ERROR": 500,
}

_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "ENDPOINT_NOT_FOUND",
    405: "BAD_REQUEST",
    413: "REQUEST_LIMIT_EXCEEDED",
    415: "BAD_REQUEST",
}


class ApiError(Exception):
    def __init__(self, error_code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.status = status or STATUS.get(error_code, 400)


def error_response(error_code: str, message: str, status: int) -> Response:
    resp = jsonify({"error_code": error_code, "message": message})
    resp.status_code = status
    return resp


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.error_code, exc.message, exc.status)

    @app.errorhandler(Unauthenticated)
    def _unauthenticated(exc: Unauthenticated) -> Response:
        resp = error_response("UNAUTHENTICATED", str(exc), 401)
        resp.headers["WWW-Authenticate"] = 'Basic realm="modelserve"'
        return resp

    @app.errorhandler(Forbidden)
    def _forbidden(exc: Forbidden) -> Response:
        return error_response("PERMISSION_DENIED", str(exc), 403)

    @app.errorhandler(AuthBackendError)
    def _auth_backend(exc: AuthBackendError) -> Response:
        log.warning("access check failed: %s", exc)
        resp = error_response("TEMPORARILY_UNAVAILABLE", f"Cannot check access right now: {exc}", 503)
        resp.headers["Retry-After"] = "5"
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        resp = error_response(_HTTP_CODES.get(status, "INTERNAL_ERROR"), exc.description or exc.name, status)
        allowed = getattr(exc, "valid_methods", None)
        if allowed:  # a 405 names the methods that would work (RFC 9110; found by schemathesis)
            resp.headers["Allow"] = ", ".join(allowed)
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response("INTERNAL_ERROR", f"Internal error: {type(exc).__name__}", 500)
