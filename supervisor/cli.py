"""The ``modelserve`` command: run the system (up, down, ps) and use the serving API.

Serving commands are thin clients of the same HTTP API everyone else uses (through the gateway),
so the CLI can never do something the API would refuse, and it works against a remote system
with ``--url``.

Credentials, first found wins: ``MODELSERVE_TOKEN`` or ``MLFLOW_TRACKING_TOKEN`` (a modelserve
token), ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (an MLflow user), else the
admin password file of the local system when this user can read it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from typing import Any

import click
import requests

from supervisor.endpoints.config import ConfigError, default_entity_name, version_ref
from supervisor.settings import Settings

API = "/api/2.0/preview/mlflow/endpoints"


class BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


def credentials(settings: Settings) -> requests.auth.AuthBase | None:
    token = os.environ.get("MODELSERVE_TOKEN") or os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return BearerAuth(token)
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return requests.auth.HTTPBasicAuth(user, password)
    admin = settings.resolved_admin_password()
    return requests.auth.HTTPBasicAuth(settings.admin_username, admin) if admin else None


class Client:
    def __init__(self, url: str, auth: requests.auth.AuthBase | None = None) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = auth

    def call(self, method: str, op: str, api: str = API, **params: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"params": params} if method == "GET" else {"json": params}
        try:
            resp = self.session.request(method, f"{self.url}{api}/{op}", timeout=30, **kwargs)
        except requests.ConnectionError as exc:
            raise click.ClickException(f"cannot reach modelserve at {self.url} (is it up?): {exc}") from exc
        _refuse_unless_ok(resp)
        body = resp.json() if resp.content else {}
        return body if isinstance(body, dict) else {}

    def download(self, op: str, api: str, out: Any, **params: Any) -> int:
        """GET a file into ``out`` (a binary file), streamed; the bytes written."""
        try:
            with self.session.get(f"{self.url}{api}/{op}", params=params, timeout=30, stream=True) as resp:
                _refuse_unless_ok(resp)
                written = 0
                for chunk in resp.iter_content(1 << 16):
                    out.write(chunk)
                    written += len(chunk)
                return written
        except requests.ConnectionError as exc:
            raise click.ClickException(f"cannot reach modelserve at {self.url} (is it up?): {exc}") from exc


def _refuse_unless_ok(resp: requests.Response) -> None:
    if resp.status_code == 200:
        return
    try:
        body = resp.json()
    except ValueError:
        body = {"message": resp.text[:500]}
    code = body.get("error_code", resp.status_code) if isinstance(body, dict) else resp.status_code
    msg = body.get("message", "") if isinstance(body, dict) else str(body)
    raise click.ClickException(f"{code}: {msg}")


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _client(ctx: click.Context) -> Client:
    return Client(ctx.obj["url"], credentials(Settings()))


@click.group()
@click.option("--url", envvar="MODELSERVE_URL", default=None, help="The gateway (default: from settings).")
@click.pass_context
def main(ctx: click.Context, url: str | None) -> None:
    """modelserve: self-hosted MLflow Model Serving."""
    ctx.ensure_object(dict)
    ctx.obj["url"] = url or Settings().gateway_url


@main.command()
@click.option("--detach", "-d", is_flag=True, help="Run in the background; stop with `modelserve down`.")
@click.option("--no-auth", is_flag=True, help="Turn authentication off (local play only; same as MODELSERVE_AUTH=off).")
def up(detach: bool, no_auth: bool) -> None:
    """Start the whole system (tracking server, supervisor, reconciler, Nginx). Ctrl-C stops it."""
    from supervisor.auth.bootstrap import ensure_admin_password
    from supervisor.launcher import Launcher, up_detached

    if no_auth:
        os.environ["MODELSERVE_AUTH"] = "off"
    settings = Settings()
    if settings.compose:
        # compose.yaml and a swarm stack start every service at once: wait for the ones we need.
        from supervisor.stack import wait_for_parts

        wait_for_parts(settings, settings.start_timeout, store_url=settings.resolved_store_url,
                       tracking_uri=settings.resolved_tracking_uri)
    if settings.auth:
        # Made here, not in the launcher, so that it is shown on this terminal and in no log file.
        password, created = ensure_admin_password(settings)
        if created:
            click.echo(f"created the MLflow admin user '{settings.admin_username}' with password: {password}\n"
                       f"  (shown once; kept in {settings.admin_password_file}, readable by you only)")
    if detach:
        up_detached(settings, echo=click.echo)
        return
    launcher = Launcher(settings, echo=lambda m: click.echo(m, err=False))
    # Before anything starts: a Ctrl-C while starting stops what was started, hosts included.
    launcher.signals.install()
    launcher.start()
    if not settings.compose:
        click.echo("press Ctrl-C to stop everything, model hosts included")
    launcher.watch()


@main.command()
def down() -> None:
    """Stop the system started by `modelserve up`, model hosts included."""
    from supervisor.launcher import down as do_down

    do_down(Settings(), echo=click.echo)


@main.command("admin-password")
def admin_password() -> None:
    """Print the MLflow admin's password (made on the first `up`), for whoever may read it."""
    settings = Settings()
    password = settings.resolved_admin_password()
    if not password:
        raise click.ClickException(f"no admin password in {settings.admin_password_file} (readable by this user?) "
                                   "nor in MODELSERVE_ADMIN_PASSWORD: it is made by the first `modelserve up`")
    click.echo(password)


@main.command()
@click.argument("name")
@click.option("--wait/--no-wait", default=False, help="Wait until the endpoint is READY or FAILED.")
@click.option("--timeout", default=900.0, show_default=True)
@click.pass_context
def enable(ctx: click.Context, name: str, wait: bool, timeout: float) -> None:
    """Enable serving for registered model NAME."""
    c = _client(ctx)
    c.call("POST", "enable", registered_model_name=name)
    click.echo(f"serving enabled for {name!r}")
    if wait:
        _wait(c, name, timeout)


def _wait(c: Client, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        status = c.call("GET", "get-status", registered_model_name=name)["endpoint_status"]
        versions = c.call("GET", "list-versions", registered_model_name=name)["endpoint_versions"]
        line = f"{status['state']}: " + ", ".join(
            f"v{v['endpoint_version_name']} {v['state'].removeprefix('VERSION_STATE_')}"
            + (f" ({v['state_message']})" if v.get("state_message") else "") for v in versions)
        if line != last:
            click.echo(line)
            last = line
        if status["state"] in ("ENDPOINT_STATE_READY", "ENDPOINT_STATE_FAILED") and all(
            v["state"] in ("VERSION_STATE_READY", "VERSION_STATE_FAILED") for v in versions
        ):
            if status["state"] == "ENDPOINT_STATE_FAILED":
                raise click.ClickException(status.get("state_message", "endpoint failed"))
            return
        time.sleep(1)
    raise click.ClickException(f"still not ready after {timeout:.0f} s")


@main.command()
@click.argument("name")
@click.pass_context
def disable(ctx: click.Context, name: str) -> None:
    """Disable serving for NAME: its processes stop and its routes go."""
    _client(ctx).call("POST", "disable", registered_model_name=name)
    click.echo(f"serving disabled for {name!r}")


@main.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Status of NAME's endpoint and versions, or of every served model."""
    c = _client(ctx)
    if name is None:
        if not as_json:
            # First, and needing no sign-in: it still answers when the registry (which checks
            # passwords) does not, and then says so before the listing fails.
            health = c.call("GET", "health", api="/api/2.0/modelserve")
            if health.get("auth") == "off":
                click.echo("authentication is OFF: anyone who reaches the gateway may do anything")
            if health.get("registry") == "unreachable":
                click.echo(f"the model registry is UNREACHABLE ({health.get('registry_error', '')}); "
                           "what is served keeps serving, registry changes wait until it answers")
        endpoints = c.call("GET", "list")["endpoints"]
        if as_json:
            click.echo(json.dumps(endpoints, indent=2))
            return
        if not endpoints:
            click.echo("no model is served")
        for e in endpoints:
            click.echo(f"{e['registered_model_name']}: {e['state']}  {e.get('state_message', '')}")
        return
    status_ = c.call("GET", "get-status", registered_model_name=name)["endpoint_status"]
    versions = c.call("GET", "list-versions", registered_model_name=name)["endpoint_versions"]
    aliases = c.call("GET", "list-version-aliases", registered_model_name=name)["aliases"]
    if as_json:
        click.echo(json.dumps({"endpoint_status": status_, "endpoint_versions": versions, "aliases": aliases},
                              indent=2))
        return
    click.echo(f"{name}: {status_['state']}  {status_.get('state_message', '')}")
    for v in versions:
        click.echo(f"  version {v['endpoint_version_name']}: {v['state']}  {v.get('state_message', '')}")
        for r in status_.get("replicas", []):
            if r["endpoint_version_name"] == v["endpoint_version_name"]:
                click.echo(f"    replica on {r['node']}: {r['state']}")
    for a in aliases:
        click.echo(f"  {a['alias']} -> version {a['endpoint_version_name']}")
    base = ctx.obj["url"]
    from urllib.parse import quote

    for v in versions:
        click.echo(f"  {base}/model/{quote(name, safe='')}/{v['endpoint_version_name']}/invocations")


@main.command()
@click.argument("name")
@click.option("--version", "version", default=None, help="Only this version's events.")
@click.pass_context
def events(ctx: click.Context, name: str, version: str | None) -> None:
    """Serving events of NAME, newest first."""
    for e in _client(ctx).call("GET", "get-event-history", registered_model_name=name)["events"]:
        if version is not None and e.get("endpoint_version_name") != version:
            continue
        v = f" v{e['endpoint_version_name']}" if "endpoint_version_name" in e else ""
        click.echo(f"{_ts(e['timestamp'])}  {e['event_type']}{v}  {e['message']}")


@main.command()
@click.argument("name")
@click.argument("version")
@click.pass_context
def logs(ctx: click.Context, name: str, version: str) -> None:
    """Build log and scoring server output of one version."""
    body = _client(ctx).call("POST", "get-version-logs", registered_model_name=name, endpoint_version_name=version)
    sys.stdout.write(body["logs"] + "\n")


BOXES = "/api/2.0/modelserve/served-models"


class OrDefault(click.ParamType):
    """A number, or ``default`` (sent as null: back to the settings' default)."""

    name = "number|default"

    def __init__(self, kind: type[int] | type[float]) -> None:
        self.kind = kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if str(value).lower() == "default":
            return None
        try:
            return self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'default'", param, ctx)


_BOX_LINES = (("network_access", "network", lambda v: "on" if v else "off"),
              ("memory_mb", "memory", lambda v: f"{v} MiB"),
              ("cpus", "cpus", lambda v: f"{v:g}"),
              ("max_processes", "processes", str),
              ("replicas", "replicas", str))


def _print_box(name: str, box: dict[str, Any]) -> None:
    defaults = set(box.get("using_defaults", ()))
    if box.get("identity") == "own_uid":
        who = f"uid {box['uid']}" if box.get("uid") is not None else "its own uid, given when it is first served"
    else:
        who = "the supervisor's user, in a user-namespace sandbox"
    click.echo(f"{name}: runs as {who}")
    if box.get("identity_error"):
        click.echo(f"  NOT STARTED: {box['identity_error']}")
    for key, label, shown in _BOX_LINES:
        if key not in box:  # a supervisor older than the setting
            continue
        click.echo(f"  {label:<10} {shown(box[key])}{'  (default)' if key in defaults else ''}")
    click.echo(f"  {'tmp':<10} {box['tmp_mb']} MiB")
    if box.get("updated_by"):
        click.echo(f"  last changed by {box['updated_by']} at {_ts(box['update_time'])}")


@main.command()
@click.argument("name")
@click.option("--network", type=click.Choice(["on", "off"]), default=None, help="Outbound network for the model.")
@click.option("--memory-mb", type=OrDefault(int), default=None, help="Memory of the model's host, MiB, or 'default'.")
@click.option("--cpus", type=OrDefault(float), default=None, help="Cores' worth of CPU time, or 'default'.")
@click.option("--max-processes", type=OrDefault(int), default=None, help="Processes and threads, or 'default'.")
@click.option("--replicas", type=OrDefault(int), default=None,
              help="Copies of each version (swarm runtime; others run one), or 'default' (1).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def box(ctx: click.Context, name: str, network: str | None, memory_mb: int | None, cpus: float | None,
        max_processes: int | None, replicas: int | None, as_json: bool) -> None:
    """The box NAME runs in (its identity, limits and network); with options, change it (needs MANAGE).

    A change restarts the model's host in the new box at the reconciler's next tick.
    """
    c = _client(ctx)
    change: dict[str, Any] = {}
    if network is not None:
        change["network_access"] = network == "on"
    # An option left out is not sent (unchanged); "default" is sent as null.
    given = ctx.get_parameter_source
    for key, value in (("memory_mb", memory_mb), ("cpus", cpus), ("max_processes", max_processes),
                       ("replicas", replicas)):
        if given(key) == click.core.ParameterSource.COMMANDLINE:
            change[key] = value
    if change:
        body = c.call("POST", "update-box", api=BOXES, registered_model_name=name, **change)
    else:
        body = c.call("GET", "get-box", api=BOXES, registered_model_name=name)
    if as_json:
        click.echo(json.dumps(body["box"], indent=2))
        return
    _print_box(name, body["box"])


TOKENS = "/api/2.0/modelserve/tokens"


@main.group()
def endpoints() -> None:
    """Serving endpoints (the Databricks API): create, get, list, update, delete."""


SERVING_ENDPOINTS = "/api/2.0/serving-endpoints"
INFERENCE_TABLES = "/api/2.0/modelserve/serving-endpoints"


def _entity_config(entities: tuple[str, ...], config_file: str | None) -> dict[str, Any]:
    """A config from a JSON file, or from ``MODEL:VERSION[=PERCENT]`` options (version: a
    number, @alias or a stage); the server validates it either way."""
    if config_file:
        with open(config_file, encoding="utf-8") as f:
            loaded = json.load(f)
        return loaded if isinstance(loaded, dict) else {}
    if not entities:
        raise click.UsageError("give --entity MODEL:VERSION[=PERCENT] (one or more) or --config FILE")
    served, routes = [], []
    for spec in entities:
        target, _, percent = spec.partition("=")
        model, sep, version = target.rpartition(":")
        if not sep or not model or not version:
            raise click.BadParameter(f"{spec!r} is not MODEL:VERSION[=PERCENT]", param_hint="--entity")
        served.append({"entity_name": model, "entity_version": version})
        if percent:
            try:
                ref = version_ref(version)
            except ConfigError as exc:
                raise click.BadParameter(exc.message, param_hint="--entity") from None
            routes.append({"served_model_name": default_entity_name(model, ref), "traffic_percentage": percent})
    config: dict[str, Any] = {"served_entities": served}
    if routes:
        config["traffic_config"] = {"routes": routes}
    return config


def _print_endpoint(ep: dict[str, Any]) -> None:
    state = ep["state"]
    click.echo(f"{ep['name']}  {state['ready']}  {state['config_update']}  (id {ep['id']}, by {ep['creator']})")
    for label, key in (("config", "config"), ("pending config", "pending_config")):
        cfg = ep.get(key)
        if not cfg:
            continue
        share = {r["served_model_name"]: r["traffic_percentage"] for r in cfg["traffic_config"]["routes"]}
        click.echo(f"  {label} version {cfg['config_version']}:")
        for e in cfg["served_entities"]:
            message = e["state"].get("deployment_state_message", "")
            click.echo(f"    {e['name']:<24} {e['entity_name']} {e['entity_version']:<10} {share.get(e['name'], 0):>3}%  "
                       f"{e['state']['deployment']}{'  ' + message if message else ''}")


def _wait_endpoint(c: Client, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        ep = c.call("GET", name, api=SERVING_ENDPOINTS)
        if ep["state"]["config_update"] != "IN_PROGRESS":
            return ep
        if time.monotonic() > deadline:
            raise click.ClickException(f"endpoint {name} still updating after {timeout:.0f} s")
        time.sleep(2)


def _finish(c: Client, ep: dict[str, Any], wait: bool, timeout: float) -> None:
    if wait:
        ep = _wait_endpoint(c, ep["name"], timeout)
    _print_endpoint(ep)
    if ep["state"]["config_update"] == "UPDATE_FAILED":
        raise click.ClickException(f"the config update failed; see `curl .../serving-endpoints/{ep['name']}"
                                   "/served-models/<entity>/build-logs`")


def _config_command(verb: str, doc: str) -> Any:
    """``endpoints create`` and ``endpoints update``: the same options, the same wait and print;
    only the request differs (a new endpoint, or a new config for one)."""

    @endpoints.command(verb, help=doc)
    @click.argument("name")
    @click.option("--entity", "entities", multiple=True, metavar="MODEL:VERSION[=PERCENT]",
                  help="A served entity (version: a number, @alias or a stage); repeat for a traffic split.")
    @click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                  help="The config as JSON (Databricks' EndpointCoreConfigInput) instead of --entity.")
    @click.option("--wait/--no-wait", default=False, help="Wait until the config update is done or failed.")
    @click.option("--timeout", default=900.0, show_default=True)
    @click.pass_context
    def command(ctx: click.Context, name: str, entities: tuple[str, ...], config_file: str | None,
                wait: bool, timeout: float) -> None:
        c = _client(ctx)
        config = _entity_config(entities, config_file)
        if verb == "create":
            ep = c.call("POST", "", api=SERVING_ENDPOINTS, name=name, config=config)
        else:
            ep = c.call("PUT", f"{name}/config", api=SERVING_ENDPOINTS, **config)
        _finish(c, ep, wait, timeout)

    return command


endpoints_create = _config_command("create", "Create a serving endpoint.")
endpoints_update = _config_command(
    "update", "Roll out a new config; the current one serves until every new entity is ready.")


@endpoints.command("get")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def endpoints_get(ctx: click.Context, name: str, as_json: bool) -> None:
    """One endpoint: state, config and pending config, entities."""
    ep = _client(ctx).call("GET", name, api=SERVING_ENDPOINTS)
    if as_json:
        click.echo(json.dumps(ep, indent=2))
    else:
        _print_endpoint(ep)


@endpoints.command("list")
@click.pass_context
def endpoints_list(ctx: click.Context) -> None:
    """The endpoints you may view."""
    found = _client(ctx).call("GET", "", api=SERVING_ENDPOINTS)["endpoints"]
    if not found:
        click.echo("no serving endpoints")
    for ep in found:
        entities = ", ".join(f"{e['entity_name']} {e['entity_version']}" for e in ep["config"]["served_entities"])
        click.echo(f"{ep['name']:<30} {ep['state']['ready']:<10} {ep['state']['config_update']:<14} {entities}")


@endpoints.command("delete")
@click.argument("name")
@click.pass_context
def endpoints_delete(ctx: click.Context, name: str) -> None:
    """Delete an endpoint; versions nothing else serves stop."""
    _client(ctx).call("DELETE", name, api=SERVING_ENDPOINTS)
    click.echo(f"endpoint {name} deleted")


@endpoints.command("inference-table")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl", show_default=True)
@click.option("--since-ms", type=click.IntRange(min=0), default=0, help="Rows of requests from this epoch ms on.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows (oldest first).")
@click.option("--output", "-o", default=None, help="The file to write (default NAME_payload.FORMAT; - for stdout).")
@click.pass_context
def endpoints_inference_table(ctx: click.Context, name: str, fmt: str, since_ms: int, limit: int | None,
                              output: str | None) -> None:
    """Export an endpoint's inference table (needs CAN_MANAGE); pandas and DuckDB read either format."""
    params: dict[str, Any] = {"format": fmt, "since_ms": since_ms, **({"limit": limit} if limit else {})}
    op = f"{name}/inference-table"
    if output == "-":
        _client(ctx).download(op, INFERENCE_TABLES, sys.stdout.buffer, **params)
        return
    path = output or f"{name}_payload.{fmt}"
    with open(path, "wb") as f:
        written = _client(ctx).download(op, INFERENCE_TABLES, f, **params)
    click.echo(f"wrote {path} ({written} bytes)")


@main.group()
def token() -> None:
    """Personal access tokens: create, list, revoke (your MLflow username and password prove who you are)."""


def _password_client(ctx: click.Context) -> Client:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or click.prompt("MLflow username")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or click.prompt("MLflow password", hide_input=True)
    return Client(ctx.obj["url"], requests.auth.HTTPBasicAuth(user, password))


@token.command("create")
@click.option("--comment", default="", help="What the token is for.")
@click.option("--lifetime-days", type=float, default=None, help="Expire after this many days (default: never).")
@click.pass_context
def token_create(ctx: click.Context, comment: str, lifetime_days: float | None) -> None:
    """Create a token; it is shown once: keep it."""
    params: dict[str, Any] = {"comment": comment}
    if lifetime_days is not None:
        params["lifetime_seconds"] = lifetime_days * 86400
    body = _password_client(ctx).call("POST", "create", api=TOKENS, **params)
    info = body["token_info"]
    click.echo(body["token_value"])
    expiry = "never expires" if info["expiry_time"] < 0 else f"expires {_ts(info['expiry_time'])}"
    click.echo(f"token id {info['token_id']} for {info['created_by_username']}; {expiry}. "
               "It is shown only this once.", err=True)


@token.command("list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """Your live tokens (never their values)."""
    infos = _password_client(ctx).call("GET", "list", api=TOKENS)["token_infos"]
    if not infos:
        click.echo("no tokens")
    for t in infos:
        expiry = "never" if t["expiry_time"] < 0 else _ts(t["expiry_time"])
        click.echo(f"{t['token_id']}  created {_ts(t['creation_time'])}  expires {expiry}  {t['comment']}")


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke one of your tokens; it stops working within MODELSERVE_AUTH_CACHE_SECONDS."""
    _password_client(ctx).call("POST", "delete", api=TOKENS, token_id=token_id)
    click.echo(f"token {token_id} revoked")


if __name__ == "__main__":
    main()
