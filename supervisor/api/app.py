"""The supervisor's Flask application factory.

Long-lived collaborators (store, registry client, runtime) are built once per worker and kept
in ``app.extensions``; request handlers get them from there, which keeps handlers plain functions
and lets tests build an app around fakes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from flask import Flask, Response, jsonify, request

from supervisor.api import auth, boxes, endpoints, errors, legacy, monitoring, openapi, pages, scaling
from supervisor.auth.access import Access
from supervisor.isolation.capabilities import runtime_capabilities
from supervisor.reconciler import send_wake
from supervisor.registry import Registry
from supervisor.runtime import make_runtime
from supervisor.runtime.base import Runtime
from supervisor.runtime.docker import engine_info
from supervisor.settings import Settings
from supervisor.status import registry_error
from supervisor.store import Store

# Answered without credentials: load balancers and `modelserve up` poll the health check, MLflow
# signs its webhooks, the OpenAPI document describes the API only, and the gateway's access check
# authenticates the credential it is asked about itself.
# The Databricks clients' host-metadata probe is sent without credentials by design.
PUBLIC_ENDPOINTS = frozenset({"health", "webhook", "openapi.openapi", "auth_check.check",
                              "databricks_config.databricks_config"})


def create_app(
    settings: Settings | None = None,
    store: Store | None = None,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    access: Access | None = None,
) -> Flask:
    settings = settings or Settings()
    # No static folder: the pages inline what they need, and a /static/ route would serve files
    # from the working directory.
    app = Flask("modelserve", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20
    store = store or Store(settings.resolved_store_url)
    app.extensions["modelserve"] = {
        "settings": settings,
        "store": store,
        "access": access or Access(settings, store),
        "registry": registry or Registry(settings.resolved_tracking_uri),
        "runtime": runtime or make_runtime(settings),
    }
    errors.register(app)

    @app.before_request
    def _authenticate_first() -> None:
        # 401 before any other answer, whatever the path: an unknown operation, a malformed body
        # or an unknown model says nothing to a caller without valid credentials.
        if request.endpoint not in PUBLIC_ENDPOINTS:
            auth.caller()

    for prefix in legacy.PREFIXES:
        app.register_blueprint(legacy.make_blueprint(prefix))
    app.register_blueprint(endpoints.bp)
    app.register_blueprint(endpoints.well_known)
    app.register_blueprint(boxes.bp)
    app.register_blueprint(scaling.bp)
    app.register_blueprint(monitoring.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(auth.check_blueprint())
    app.register_blueprint(openapi.bp)
    for prefix in auth.TOKEN_PREFIXES:
        app.register_blueprint(auth.token_blueprint(prefix))

    @app.get("/api/2.0/modelserve/health")
    def health() -> Response:
        # Unauthenticated on purpose: load balancers and `modelserve up` poll it. It also works
        # while the registry (and so every sign-in) is away, which is when it is most wanted.
        # The registry's state is the reconciler's last reading (it asks every tick).
        problem = registry_error(store)
        body: dict[str, Any] = {"status": "ok", "auth": "on" if settings.auth else "off",
                                "registry": "unreachable" if problem else "reachable"}
        if problem:
            body["registry_error"] = problem
        # What this machine can enforce of a model's box (probed once per worker).
        body["isolation"] = runtime_capabilities(settings.runtime, settings.sandbox, engine_info).to_json()
        return jsonify(body)

    @app.post("/api/2.0/modelserve/webhook")
    def webhook() -> Response:
        """MLflow webhooks only speed the reconciler up; the body is not trusted for anything else."""
        secret = settings.webhook_secret
        if secret:
            delivery = request.headers.get("X-MLflow-Delivery-Id", "")
            stamp = request.headers.get("X-MLflow-Timestamp", "")
            signed = f"{delivery}.{stamp}.".encode() + request.get_data()
            want = "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
            if not hmac.compare_digest(want, request.headers.get("X-MLflow-Signature", "")):
                raise errors.ApiError("UNAUTHENTICATED", "Bad webhook signature", 401)
        send_wake(settings)
        return jsonify({})

    return app
