"""The roles compose.yaml's containers play besides ``modelserve up``: ``python -m supervisor.stack ROLE``.

Why a module and not shell in compose.yaml: the same code must run on every base image (Debian's
python3 or python:3.11-slim, no shell tools assumed), and the secrets are made with the same
helpers, modes and refusals as the embedded system's (``auth/bootstrap.py``).

* ``secrets DIR``: the one-shot that runs before everything. On first start it makes, in the
  ``secrets`` volume, the Postgres password (``postgres/password``, owned by the official image's
  postgres uid), the libpq password file every client reads (``modelserve/pgpass``: no password in
  any URL), the admin password and MLflow's Flask secret key. Existing ones are kept: a restart,
  or ``down`` then ``up``, finds the same. ``down -v`` removes them with the databases they open.
* ``mlflow [ARGS...]``: ``mlflow server ARGS --app-name basic-auth`` with the auth app's config
  (its user database in Postgres, our token plugin), the Flask secret and the admin's credentials.
* ``gateway``: Nginx in the foreground with the config the supervisor renders in the data dir.
  It waits for the first config; after that it keeps serving while the supervisor restarts, and
  reloads Nginx when the supervisor asks on its control socket (gatewaycontrol.py).
* ``ping URL [--any-status]``: the healthchecks (no curl in the images).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from supervisor.settings import Settings

# bootstrap (and through it MLflow) is imported by the roles that need it only: ``ping`` runs every
# few seconds as a healthcheck and must stay light.

# How long a role waits for the parts it needs (wait_for_parts): a first start builds nothing, but
# Postgres initialises its data dir and MLflow migrates its databases.
WAIT_SECONDS = 600.0

# The official postgres image's uid and gid; images/postgres.Dockerfile uses the same.
POSTGRES_UID = 999
POSTGRES_USER = "modelserve"


def _private_dir(path: Path, owner: int | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.chown(path, owner, owner)
    path.chmod(0o700)
    return path


def make_secrets(root: Path, postgres_uid: int | None = POSTGRES_UID) -> None:
    """Every secret of the stack under ``root``; the ones that exist are kept."""
    from supervisor.auth import bootstrap
    from supervisor.webhooks import kept_secret

    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # postgres (uid 999) must reach its own directory below
    pg_dir = _private_dir(root / "postgres", postgres_uid)
    password = kept_secret(pg_dir / "password")
    if postgres_uid is not None:
        os.chown(pg_dir / "password", postgres_uid, postgres_uid)
    ours = _private_dir(root / "modelserve")
    # host:port:database:user:password; libpq ignores a file others may read.
    pgpass = ours / "pgpass"
    pgpass.touch(mode=0o600)
    pgpass.write_text(f"*:*:*:{POSTGRES_USER}:{password}\n")
    settings = Settings(secrets_dir=ours)
    bootstrap.ensure_admin_password(settings)
    kept_secret(ours / "flask_secret_key")


def wait_for(what: str, ready: Callable[[], object], timeout: float, poll: float = 1.0) -> None:
    """Return once ``ready()`` gives something true without raising; SystemExit after ``timeout``.

    Why each role waits for the parts it needs instead of compose's ``depends_on`` conditions:
    ``docker stack deploy`` knows no conditions (nor order), and restarts by the engine back off
    for up to a minute each. Said once when it has to wait, with the last reason when it gives up."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            if ready():
                return
            why = "not yet"
        except Exception as exc:  # anything the probe raises means "not yet"
            why = " ".join(str(exc).split())[:300] or type(exc).__name__
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not ready after {timeout:.0f} s ({why})")
        if not said:
            print(f"waiting for {what} ({why})", flush=True)
            said = True
        time.sleep(poll)


def wait_for_parts(settings: Settings, timeout: float, store_url: str = "", tracking_uri: str = "") -> None:
    """What a role needs from the others before it starts: the secrets the one-shot makes (the
    admin password, the libpq password file), then the databases, then the tracking server."""
    if settings.auth and not settings.admin_password:
        wait_for(f"the admin password in {settings.admin_password_file} (the secrets service makes it)",
                 settings.resolved_admin_password, timeout)
    pgpass = os.environ.get("PGPASSFILE", "")
    if pgpass:
        wait_for(f"the Postgres password file {pgpass} (the secrets service makes it)",
                 lambda: Path(pgpass).read_text().strip(), timeout)
    if store_url:
        import sqlalchemy

        def connects() -> bool:
            engine = sqlalchemy.create_engine(store_url)
            try:
                with engine.connect():
                    return True
            finally:
                engine.dispose()

        wait_for(f"the database {store_url.rsplit('@', 1)[-1]}", connects, timeout)
    if tracking_uri:
        wait_for(f"the tracking server {tracking_uri}", lambda: ping(f"{tracking_uri.rstrip('/')}/health"), timeout)


def mlflow_server(args: list[str]) -> None:
    """Replaces this process with ``mlflow server`` running MLflow's basic-auth app."""
    from supervisor.auth import bootstrap

    settings = Settings()
    auth_db = os.environ.get("MODELSERVE_MLFLOW_AUTH_DB", "")
    if not auth_db:
        raise SystemExit("MODELSERVE_MLFLOW_AUTH_DB is not set: the URL of MLflow's user database")
    wait_for_parts(settings, WAIT_SECONDS, store_url=auth_db)
    password, _ = bootstrap.ensure_admin_password(settings)
    env = {**os.environ, **bootstrap.mlflow_server_env(settings, password, database_uri=auth_db)}
    # Each of the server's workers migrates the user database as it starts; on a new Postgres
    # database two at once would race on CREATE TABLE. Migrated here first, they find it done.
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore().init_db(auth_db)
    os.execvpe("mlflow", ["mlflow", "server", *args, "--app-name", "basic-auth"], env)


def gateway(poll: float = 0.5) -> int:
    """Nginx in the foreground, once the supervisor wrote its config; this process stays its parent.

    It answers the supervisor's reloads on the control socket (gatewaycontrol.py: the two
    containers share no PID namespace), passes the engine's stop signals on to Nginx, and ends
    with Nginx's own exit code."""
    from supervisor.gateway import Gateway
    from supervisor.gatewaycontrol import ControlServer

    settings = Settings()
    local = Gateway(settings)  # not compose: this is the process that can signal Nginx
    prefix = settings.nginx_dir
    conf = prefix / "nginx.conf"
    # A config from an earlier run is good enough to start with: the supervisor reloads it.
    announced = False
    while not conf.exists():
        if not announced:
            print(f"gateway: waiting for the supervisor to write {conf}", flush=True)
            announced = True
        time.sleep(poll)
    # Left by a gateway that was killed: a stale pid would be signalled, and the socket file
    # would keep Nginx from binding it.
    for name in ("nginx.pid", "gate.sock"):
        (prefix / name).unlink(missing_ok=True)
    argv = [settings.nginx_bin, "-p", f"{prefix}/", "-c", str(conf), "-g", "daemon off;"]
    print(f"gateway: {' '.join(argv)}", flush=True)
    nginx = subprocess.Popen(argv)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            nginx.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(signum, forward)

    def ping() -> str:
        pid = local.pid()
        if pid is None:
            raise RuntimeError("nginx is not running (yet)")
        return str(pid)

    def reopen() -> str:
        if not local.reopen_logs():
            raise RuntimeError("nginx did not reopen its logs")
        return ""

    def reload() -> str:
        local.reload()
        return ""

    control = ControlServer(settings.nginx_dir / "control.sock",
                            {"ping": ping, "reload": reload, "reopen": reopen}).start()
    try:
        return nginx.wait()
    finally:
        control.close()


def ping(url: str, any_status: bool = False) -> bool:
    """True when ``url`` answers 2xx (any HTTP answer with ``any_status``)."""
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            return 200 <= resp.status < 300
    except urllib.error.HTTPError:
        return any_status
    except OSError:
        return False


USAGE = "usage: python -m supervisor.stack secrets DIR | mlflow [ARGS...] | gateway | ping URL [--any-status]"


def main(argv: list[str]) -> int:
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    role, rest = argv[0], argv[1:]
    if role == "secrets" and len(rest) == 1:
        make_secrets(Path(rest[0]), POSTGRES_UID if os.geteuid() == 0 else None)
        print(f"secrets: ready in {rest[0]}")
        return 0
    if role == "mlflow":
        mlflow_server(rest)
    if role == "gateway" and not rest:
        return gateway()
    if role == "ping" and rest and set(rest[1:]) <= {"--any-status"}:
        return 0 if ping(rest[0], "--any-status" in rest[1:]) else 1
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
