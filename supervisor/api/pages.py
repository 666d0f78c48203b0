"""The serving pages under ``/serving/``: status of every model, one model's Serving tab, a version.

Server-rendered Jinja; the only JavaScript (inline in ``base.html.j2``) re-fetches a page's live
panel (``?partial=1``, the same template block rendered alone), asks before Enable/Stop and calls
the legacy API for them, saves a model's box through its JSON API (a cross-site form cannot send
JSON, and that API reads nothing else, so it needs no CSRF token), copies URIs, and runs the test
box from the browser against the gateway's ``/model/...`` URL (same origin). Every page renders from the store and the runtime
first and treats the registry as optional, so a registry that is down, a model without
versions or a failed version is a message on the page, never a stack trace.

Sign-in is the gateway's: the same credentials as everywhere behind it (the browser asks for the
MLflow username and password on the first 401, then sends them with every request, the page's
own ``fetch`` calls included). Identity and permissions are one hook each (``current_user``,
``can_manage``): a page lists and shows only models the caller may read (one they may not read
is, to them, a model that does not exist: the same 404), and offers Enable/Stop and the form that
changes a model's box only to those who may manage the model (the API checks again when it is
called).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from flask import Blueprint, Response, current_app, g, jsonify, request, url_for
from werkzeug.exceptions import HTTPException, NotFound

from supervisor import naming
from supervisor.api import auth
from supervisor.api.boxes import BOX_API, box_json
from supervisor.api.charts import request_charts
from supervisor.api.examples import ExampleUnavailable, example_files, load_example
from supervisor.auth.access import AuthBackendError, Forbidden, Principal, Unauthenticated
from supervisor.deployer import build_log_path
from supervisor.endpoints.view import page_view
from supervisor.metrics.exposition import load_state
from supervisor.plan import alias_targets, stage_targets
from supervisor.registry import Registry, RegistryModel, RegistryUnavailable
from supervisor.runtime.base import Runtime
from supervisor.runtime.statefiles import tail_text
from supervisor.settings import Settings
from supervisor.status import endpoint_status, registry_error
from supervisor.store import FAILED, LAUNCHING, PENDING, READY, Deployment, Event, ServingEndpoint, Store

log = logging.getLogger("modelserve.pages")

bp = Blueprint("pages", __name__, url_prefix="/serving")

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("supervisor", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

ENDPOINT_LABELS = {"ENDPOINT_STATE_PENDING": "Pending", "ENDPOINT_STATE_READY": "Ready",
                   "ENDPOINT_STATE_FAILED": "Failed"}
VERSION_LABELS = {PENDING: "Pending", LAUNCHING: "Launching", READY: "Ready", FAILED: "Failed"}
LOG_TAIL_BYTES = 200_000
BUILD_TAIL_LINES = 12


# --- identity: the one place access control plugs in -------------------------------------
def current_user() -> Principal:
    """The signed-in user (an anonymous admin when access control is off); a request without
    valid credentials ends here with a 401 that makes the browser ask for them."""
    return auth.caller()


def can_read(model: str) -> bool:
    return auth.access().allowed(g.user, model, "read")


def can_manage(model: str) -> bool:
    """May the current user enable or stop serving ``model``?"""
    return auth.access().allowed(g.user, model, "manage")


def _require_read(model: str) -> None:
    if model and not can_read(model):
        raise _no_such_model(model)


def _no_such_model(name: str) -> NotFound:
    return NotFound(f"There is no registered model named “{name}”.")


@bp.before_request
def _identify() -> None:
    g.user = current_user()


# --- helpers -------------------------------------------------------------------------------
def _ctx() -> tuple[Settings, Store, Registry, Runtime]:
    ext = current_app.extensions["modelserve"]
    return ext["settings"], ext["store"], ext["registry"], ext["runtime"]


def _render(template: str, status: int = 200, **context: Any) -> Response:
    html = _env.get_template(template).render(url_for=url_for, user=g.get("user"), box_api=BOX_API, **context)
    return Response(html, status=status, mimetype="text/html")


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


_env.filters["when"] = _when
_env.filters["urlpart"] = lambda s: quote(str(s), safe="")


@dataclass
class VersionView:
    version: str
    state: str  # a VERSION_LABELS value, or "Not served"
    message: str = ""
    stage: str = "None"
    aliases: list[str] = field(default_factory=list)
    build_tail: str = ""
    replicas: list[str] = field(default_factory=list)  # "node: state" per replica (swarm runtime)


@dataclass
class UriView:
    label: str  # "Version 2", "Stage Production", "Alias @champion"
    path: str  # /model/<quoted name>/<segment>/invocations
    version: str
    ready: bool


@dataclass
class ModelView:
    name: str
    enabled: bool
    state: str  # "Not served" or an ENDPOINT_LABELS value
    message: str = ""
    versions: list[VersionView] = field(default_factory=list)
    uris: list[UriView] = field(default_factory=list)


def _version_views(settings: Settings, deps: list[Deployment]) -> list[VersionView]:
    out = []
    for d in deps:
        v = VersionView(d.version, VERSION_LABELS.get(d.state, d.state), d.state_message, d.stage, list(d.aliases))
        if d.state in (PENDING, LAUNCHING):
            lines = tail_text(build_log_path(settings, d.model, d.version), 20_000).splitlines()
            v.build_tail = "\n".join(lines[-BUILD_TAIL_LINES:])
        out.append(v)
    return out


def _uris(name: str, deps: list[Deployment]) -> list[UriView]:
    base = f"/model/{quote(name, safe='')}"
    out = [UriView(f"Version {d.version}", f"{base}/{d.version}/invocations", d.version, d.state == READY)
           for d in deps if d.state != FAILED]
    out += [UriView(f"Stage {s}", f"{base}/{s}/invocations", d.version, d.state == READY)
            for s, d in stage_targets(deps).items()]
    out += [UriView(f"Alias @{a}", f"{base}/@{quote(a, safe='')}/invocations", d.version, d.state == READY)
            for a, d in sorted(alias_targets(deps).items())]
    return out


def _model_view(name: str, registered: RegistryModel | None) -> ModelView:
    settings, store, _, runtime = _ctx()
    if not store.is_enabled(name):
        versions = [VersionView(v.version, "Not served", "", v.stage, list(v.aliases))
                    for v in (registered.versions if registered else ())]
        return ModelView(name, False, "Not served", versions=versions)
    deps = store.deployments(name)
    status = endpoint_status(store, runtime, name)
    views = _version_views(settings, deps)
    for v in views:
        v.replicas = [f"{r['node']}: {r['state']}" for r in status.get("replicas", [])
                      if r["endpoint_version_name"] == v.version]
    return ModelView(name, True, ENDPOINT_LABELS.get(status["state"], status["state"]),
                     status.get("state_message", ""), views, _uris(name, deps))


def _lookup(name: str) -> tuple[RegistryModel | None, str | None]:
    """The registry's model (None if absent or unknown) and why the registry could not say."""
    _, store, registry, _ = _ctx()
    known = registry_error(store)
    if known:
        # The reconciler found it away (it asks every tick and clears this once it answers): a
        # page should not wait a timeout for the same answer, every 2 s, holding an API worker.
        return None, known
    try:
        return registry.get_model(name), None
    except RegistryUnavailable as exc:
        return None, str(exc).splitlines()[0][:300] if str(exc) else "unreachable"


def _require_model(name: str) -> tuple[RegistryModel | None, str | None]:
    if not name:
        raise NotFound("Which model? Open a model from the status page.")
    registered, down = _lookup(name)
    _, store, _, _ = _ctx()
    if registered is None and down is None and not store.is_enabled(name):
        raise _no_such_model(name)
    return registered, down


def endpoint_state_label(ep: ServingEndpoint) -> str:
    """The status page's one word for an endpoint (its readiness is worked out on its own page)."""
    return {"IN_PROGRESS": "Pending", "UPDATE_FAILED": "Failed"}.get(ep.config_update, "Ready")


# --- pages ---------------------------------------------------------------------------------
@bp.get("/")
def status_page() -> Response:
    _, store, registry, _ = _ctx()
    down = registry_error(store)  # known to be away: do not wait a timeout for it (see _lookup)
    names: list[str] = []
    if not down:
        try:
            names = registry.list_models()
        except RegistryUnavailable as exc:
            down = str(exc).splitlines()[0][:300]
    names = sorted(n for n in set(names) | set(store.enabled_models()) if can_read(n))
    models = [_model_view(n, None) for n in names]
    template = "status_live.html.j2" if request.args.get("partial") else "status.html.j2"
    return _render(template, models=models, registry_down=down, endpoints=_viewable_endpoints(),
                   endpoint_state=endpoint_state_label)


def _viewable_endpoints() -> list[ServingEndpoint]:
    store = _ctx()[1]
    return [ep for ep in store.endpoints() if auth.access().endpoint_allowed(g.user, ep.id, "CAN_VIEW")]


@bp.get("/endpoint")
def endpoint_page() -> Response:
    """A serving endpoint: state, configs with their split drawn as a bar, entities, events of
    their versions, a test box. One the caller may not view is, here, one that does not exist."""
    name = request.args.get("name", "")
    store = _ctx()[1]
    ep = store.endpoint(name)
    if ep is None or not auth.access().endpoint_allowed(g.user, ep.id, "CAN_VIEW"):
        raise NotFound(f"There is no serving endpoint named “{name}”.")
    deps: dict[str, list[Deployment]] = {}
    for d in store.deployments():
        deps.setdefault(d.model, []).append(d)
    view = page_view(ep, deps)
    events = sorted((e for model, version in view.versions for e in store.events(model, version, limit=50)
                     if not e.internal), key=lambda e: -e.timestamp)[:100]
    template = "endpoint_live.html.j2" if request.args.get("partial") else "endpoint.html.j2"
    return _render(template, ep=ep, view=view, events=events, level=auth.access().endpoint_level(g.user, ep.id),
                   live_url=url_for("pages.endpoint_page", name=name, partial=1))


@bp.get("/model")
def model_page() -> Response:
    name = request.args.get("name", "")
    tab = request.args.get("tab", "versions")
    if tab not in ("versions", "events"):
        tab = "versions"
    _require_read(name)
    settings, store, _, _ = _ctx()
    if request.args.get("partial") and store.is_enabled(name):
        # A served model's live panel needs only the store; spare the registry a call every 2 s.
        registered, down = None, None
    else:
        registered, down = _require_model(name)
    model = _model_view(name, registered)
    events = [e for e in store.events(name, limit=500) if not e.internal] if tab == "events" else []
    charts = request_charts(load_state(store).timeline_of(name), int(time.time() * 1000))
    partial = bool(request.args.get("partial"))
    template = "model_live.html.j2" if partial else "model.html.j2"
    # The box is outside the live panel (its form must not be redrawn under the user's hands).
    box = None if partial else box_json(store, settings, name)
    return _render(template, model=model, tab=tab, events=events, charts=charts, box=box,
                   box_defaults={"memory_mb": settings.model_memory_mb, "cpus": settings.model_cpus,
                                 "max_processes": settings.model_pids},
                   registry_down=down or registry_error(store), can_manage=can_manage(name),
                   gateway=request.host_url.rstrip("/"), live_url=url_for(
                       "pages.model_page", name=name, tab=tab, partial=1))


@bp.get("/version")
def version_page() -> Response:
    settings, store, _, runtime = _ctx()
    name = request.args.get("name", "")
    version = request.args.get("version", "")
    tab = request.args.get("tab", "logs")
    if tab not in ("logs", "events"):
        tab = "logs"
    _require_read(name)
    _require_model(name)
    d = store.deployment(name, version)
    if d is None:
        raise NotFound(f"Version “{version}” of “{name}” is not served; its logs and events are kept only "
                       "while it is.")
    view = _version_views(settings, [d])[0]
    build_log = served_log = ""
    events: list[Event] = []
    if tab == "logs":
        build_log = tail_text(build_log_path(settings, name, version), LOG_TAIL_BYTES)
        served_log = runtime.version_log(name, version, LOG_TAIL_BYTES)
    else:
        events = [e for e in store.events(name, version=version, limit=500) if not e.internal]
    template = "version_live.html.j2" if request.args.get("partial") else "version.html.j2"
    return _render(template, name=name, v=view, tab=tab, build_log=build_log, served_log=served_log,
                   events=events, live_url=url_for("pages.version_page", name=name, version=version, tab=tab,
                                                   partial=1))


@bp.get("/example")
def example() -> Response:
    """JSON for the test box: ``{"body", "content_type", "source"}`` or ``{"message"}`` with 404."""
    settings, store, registry, _ = _ctx()
    name = request.args.get("name", "")
    version = request.args.get("version", "")
    if not name:  # found by schemathesis: MLflow's refusal of an empty name read as "registry down"
        return _json_message("Which model? Pass name=<registered model name>.", 400)
    if not version.isdigit():  # registry versions are numbers; anything else could walk the file system
        return _json_message(f"“{version}” is not a model version number.", 400)
    if not can_read(name):
        return _json_message(_no_model_files(name, version), 404)  # what a model that does not exist gets
    d = store.deployment(name, version)
    local = Path(d.model_dir) if d and d.model_dir else settings.models_dir / naming.model_id(name) / version
    tmp: Path | None = None
    try:
        if not (local / "MLmodel").is_file():
            # Not downloaded (yet): fetch just the MLmodel and the example files from the registry.
            tmp = Path(tempfile.mkdtemp(prefix=".example-", dir=settings.data_dir))
            registry.fetch_files(name, version, ["MLmodel"], tmp)
            if not (tmp / "MLmodel").is_file():
                raise ExampleUnavailable(_no_model_files(name, version))
            registry.fetch_files(name, version, example_files(tmp), tmp)
            local = tmp
        ex = load_example(local)
    except ExampleUnavailable as exc:
        return _json_message(str(exc), 404)
    except RegistryUnavailable as exc:
        return _json_message(f"The model registry is unreachable, so the example cannot be read: {exc}", 503)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return jsonify({"body": ex.body, "content_type": ex.content_type, "source": ex.source})


def _no_model_files(name: str, version: str) -> str:
    return f"Version {version} of “{name}” has no model files in the registry."


def _json_message(message: str, status: int) -> Response:
    resp = jsonify({"message": message})
    resp.status_code = status
    return resp


# --- errors: a page, never a stack trace ------------------------------------------------------
@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return _render("error.html.j2", status=exc.code or 500, title=exc.name, message=exc.description or "")


# A blueprint's handlers are asked before the app's for every class of the exception, so the
# access errors need their own here, or the catch-all below would turn them into a 500 page.
@bp.errorhandler(Unauthenticated)
def _unauthenticated(exc: Unauthenticated) -> Response:
    resp = _render("error.html.j2", status=401, title="Sign in",
                   message=f"{exc} Sign in with your MLflow username and password.")
    resp.headers["WWW-Authenticate"] = 'Basic realm="modelserve"'
    return resp


@bp.errorhandler(Forbidden)
def _forbidden(exc: Forbidden) -> Response:
    return _render("error.html.j2", status=403, title="Not allowed", message=str(exc))


@bp.errorhandler(AuthBackendError)
def _auth_backend(exc: AuthBackendError) -> Response:
    resp = _render("error.html.j2", status=503, title="Access cannot be checked right now",
                   message=f"The model registry did not answer the access check ({exc}); retry shortly.")
    resp.headers["Retry-After"] = "5"
    return resp


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("page failed")
    return _render("error.html.j2", status=500, title="Something went wrong",
                   message=f"This page could not be shown ({type(exc).__name__}). The supervisor's log "
                           "(logs/api.log) has the details.")
