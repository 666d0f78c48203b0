"""The ``modelserve`` command: run the system (up, down, ps) and use the serving API.

Serving commands are thin clients of the same HTTP API everyone else uses (through the gateway),
so the CLI can never do something the API would refuse, and it works against a remote system
with ``--url``.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

import click
import requests

from supervisor.settings import Settings

API = "/api/2.0/preview/mlflow/endpoints"


class Client:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()

    def call(self, method: str, op: str, **params: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"params": params} if method == "GET" else {"json": params}
        try:
            resp = self.session.request(method, f"{self.url}{API}/{op}", timeout=30, **kwargs)
        except requests.ConnectionError as exc:
            raise click.ClickException(f"cannot reach modelserve at {self.url} (is it up?): {exc}") from exc
        try:
            body = resp.json()
        except ValueError:
            body = {"message": resp.text[:500]}
        if resp.status_code != 200:
            code = body.get("error_code", resp.status_code) if isinstance(body, dict) else resp.status_code
            msg = body.get("message", "") if isinstance(body, dict) else str(body)
            raise click.ClickException(f"{code}: {msg}")
        return body if isinstance(body, dict) else {}


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _client(ctx: click.Context) -> Client:
    return Client(ctx.obj["url"])


@click.group()
@click.option("--url", envvar="MODELSERVE_URL", default=None, help="The gateway (default: from settings).")
@click.pass_context
def main(ctx: click.Context, url: str | None) -> None:
    """modelserve: self-hosted MLflow Model Serving."""
    ctx.ensure_object(dict)
    ctx.obj["url"] = url or Settings().gateway_url


@main.command()
@click.option("--detach", "-d", is_flag=True, help="Run in the background; stop with `modelserve down`.")
def up(detach: bool) -> None:
    """Start the whole system (tracking server, supervisor, reconciler, Nginx). Ctrl-C stops it."""
    from supervisor.launcher import Launcher, up_detached

    settings = Settings()
    if detach:
        up_detached(settings, echo=click.echo)
        return
    launcher = Launcher(settings, echo=lambda m: click.echo(m, err=False))
    launcher.start()
    click.echo("press Ctrl-C to stop")
    launcher.watch()


@main.command()
def down() -> None:
    """Stop the system started by `modelserve up`, model hosts included."""
    from supervisor.launcher import down as do_down

    do_down(Settings(), echo=click.echo)


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


if __name__ == "__main__":
    main()
