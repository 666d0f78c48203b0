"""Access control over HTTP: the gateway's ``auth_request`` check and the personal access token API.

``/internal/auth/check`` is what Nginx asks before every scoring request, whatever its path. It
lives outside the paths the gateway sends to the supervisor, so a client cannot call it through
the gateway, and it trusts exactly one header besides the credential: ``X-Modelserve-Model``,
which Nginx always overwrites with the model its route map found for the decoded path
(percent-encoded there, so any name fits in a header; absent for a path with no route), and
``X-Modelserve-Endpoint``, likewise overwritten, with the serving endpoint a path names. A 403
here becomes, at the gateway, the same 404 as a path where nothing is served. Nginx caches its answers; how long, and how it may use them once
expired, is said here in ``Cache-Control`` rather than in the Nginx template, because only the
RFC 5861 extensions bound the use of a stale answer: ``stale-while-revalidate`` lets Nginx
answer from an expired decision while it refreshes it in the background (no caller waits for
MLflow's slow password check when an entry expires), ``stale-if-error`` lets it keep serving
callers it knows while this check cannot answer (the API restarting, MLflow unreachable), for
``MODELSERVE_AUTH_STALE_SECONDS`` and no longer. Nginx's own ``proxy_cache_use_stale`` would
do the same without any bound.

The token API uses the shapes of Databricks' ``/api/2.0/token/{create,list,delete}`` and is
also served under ``/api/2.0/modelserve/tokens/``. Creating a token needs the MLflow password
(a token cannot mint tokens); listing and revoking one's own tokens needs any valid credential.
"""

from __future__ import annotations

from urllib.parse import unquote

from flask import Blueprint, Response, current_app, g, jsonify, make_response, request

from supervisor.api.body import json_body
from supervisor.api.errors import ApiError
from supervisor.auth import tokens
from supervisor.auth.access import Access, Principal
from supervisor.gateway import nginx_cache_seconds
from supervisor.settings import Settings

TOKEN_PREFIXES = ("/api/2.0/modelserve/tokens", "/api/2.0/token")


def access() -> Access:
    return current_app.extensions["modelserve"]["access"]  # type: ignore[no-any-return]


def caller() -> Principal:
    """The authenticated caller of this request (computed once per request)."""
    if "ms_principal" not in g:
        g.ms_principal = access().authenticate(request.headers.getlist("Authorization"))
    return g.ms_principal  # type: ignore[no-any-return]


def check_blueprint() -> Blueprint:
    bp = Blueprint("auth_check", __name__)

    @bp.route("/internal/auth/check", methods=["GET", "POST", "HEAD"])
    def check() -> Response:
        who = caller()
        try:
            model = unquote(request.headers.get("X-Modelserve-Model", ""), errors="strict")
        except UnicodeDecodeError:  # never from Nginx: it sends names Python encoded
            raise ApiError("PERMISSION_DENIED", "Undecodable model name", 403) from None
        # A path with no route (no model) lets any known caller through to the gateway's 404;
        # only the credential is checked (above: 401), so an unknown path says nothing more to
        # a caller without one than a served model's path does.
        if model:
            access().require(who, model, "read")
        # A serving endpoint's path (X-Modelserve-Endpoint, likewise always set by Nginx): CAN_QUERY
        # on that endpoint. One the store no longer has lets the caller through to the gateway's 404.
        endpoint = request.headers.get("X-Modelserve-Endpoint", "")
        if endpoint:
            found = access().store.endpoint(endpoint)
            if found is not None:
                access().require_endpoint(who, found.id, found.name, "CAN_QUERY")
        resp = make_response("", 200)
        resp.headers["X-Modelserve-User"] = who.username
        return resp

    @bp.after_request
    def cache_policy(resp: Response) -> Response:
        settings: Settings = current_app.extensions["modelserve"]["settings"]
        resp.headers["Cache-Control"] = decision_cache_control(resp.status_code, settings)
        return resp

    return bp


def decision_cache_control(status: int, settings: Settings) -> str:
    """How long Nginx may reuse this answer of the check. Only decisions are kept (200, 401,
    403); a 503 (the check could not decide) is never stored."""
    fresh = nginx_cache_seconds(settings.auth_cache_seconds)
    if status not in (200, 401, 403) or fresh <= 0:
        return "no-store"
    # Refreshing in the background may serve one expired answer per credential and model, so
    # a revocation takes effect within the next refresh: at most one request later than before.
    return (f"max-age={fresh}, stale-while-revalidate={fresh}, "
            f"stale-if-error={max(0, int(settings.auth_stale_seconds))}")


def _auth_on() -> None:
    if not access().enabled:
        raise ApiError("BAD_REQUEST", "Authentication is off (MODELSERVE_AUTH=off): there are no tokens to manage")


def token_blueprint(prefix: str) -> Blueprint:
    bp = Blueprint("tokens_" + prefix.strip("/").replace("/", "_").replace(".", "_"), __name__,
                   url_prefix=prefix)

    @bp.post("/create")
    def create() -> Response:
        _auth_on()
        who = caller()
        if who.via != "password":
            raise ApiError("PERMISSION_DENIED", "Creating a token needs your MLflow username and password "
                                                "(Basic auth), not a token", 403)
        body = json_body()
        lifetime = body.get("lifetime_seconds")
        comment = body.get("comment", "")
        if lifetime is not None and (isinstance(lifetime, bool) or not isinstance(lifetime, (int, float))):
            raise ApiError("INVALID_PARAMETER_VALUE", "lifetime_seconds must be a number")
        if not isinstance(comment, str):
            raise ApiError("INVALID_PARAMETER_VALUE", "comment must be a string")
        try:
            value, info = tokens.create_token(access().store, who.username, comment, lifetime)
        except tokens.TokenError as exc:
            raise ApiError("INVALID_PARAMETER_VALUE", str(exc)) from exc
        return jsonify({"token_value": value, "token_info": info.to_json()})

    @bp.get("/list")
    def list_() -> Response:
        _auth_on()
        who = caller()
        everyone = request.args.get("all", "").lower() in ("1", "true") and who.is_admin
        found = tokens.list_tokens(access().store, None if everyone else who.username)
        return jsonify({"token_infos": [t.to_json() for t in found]})

    @bp.post("/delete")
    def delete() -> Response:
        _auth_on()
        who = caller()
        token_id = json_body().get("token_id")
        if not isinstance(token_id, str) or not token_id:
            raise ApiError("INVALID_PARAMETER_VALUE", "Missing required parameter 'token_id'")
        try:
            tokens.revoke_token(access().store, token_id, None if who.is_admin else who.username)
        except tokens.TokenError as exc:
            raise ApiError("RESOURCE_DOES_NOT_EXIST", str(exc)) from exc
        return jsonify({})

    return bp
