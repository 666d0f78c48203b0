"""Secure by default: the admin password, the Flask secret and MLflow's auth config, made on first start.

``modelserve up`` must never start an open system by accident. The first start creates the admin
password at random (or takes ``MODELSERVE_ADMIN_PASSWORD``), shows it once, and keeps it in a
file only the owner can read, beside the other secrets in ``<data_dir>/auth/`` (the Flask secret
key MLflow's auth app needs for CSRF, and the auth config that puts MLflow's user database in
the data dir too). MLflow creates the admin user itself from ``MLFLOW_AUTH_ADMIN_*`` the first
time it starts on an empty user database and ignores them afterwards; ``check_admin`` therefore
verifies at every start that the password we hold is still the admin's.
"""

from __future__ import annotations

import configparser
import io
import os
import secrets
import time
from pathlib import Path

import requests

from supervisor.settings import Settings
from supervisor.webhooks import kept_secret

PLUGIN = "supervisor.auth.mlflow_plugin:authenticate_request"
# MLflow 3.17 refuses the password older releases shipped as the default.
REFUSED_PASSWORDS = frozenset({"password1234", ""})
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def ensure_admin_password(settings: Settings) -> tuple[str, bool]:
    """(the admin password, whether it was just created). The environment wins over the file."""
    if settings.admin_password:
        if settings.admin_password in REFUSED_PASSWORDS:
            raise SystemExit("MODELSERVE_ADMIN_PASSWORD must not be MLflow's old default password")
        return settings.admin_password, False
    existing = settings.resolved_admin_password()
    if existing:
        return existing, False
    _private_dir(settings.auth_dir)
    password = kept_secret(settings.admin_password_file, lambda: secrets.token_urlsafe(18))
    return password, True


def mlflow_server_env(settings: Settings, password: str, database_uri: str = "") -> dict[str, str]:
    """What ``mlflow server --app-name basic-auth`` needs; writes its auth config. Its user
    database: ``database_uri``, else SQLite beside the config (the embedded server's)."""
    if settings.auth_default_permission not in PERMISSIONS:
        raise SystemExit(f"MODELSERVE_AUTH_DEFAULT_PERMISSION must be one of {', '.join(PERMISSIONS)}")
    auth_dir = _private_dir(settings.auth_dir)
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": settings.auth_default_permission,
        "database_uri": database_uri or f"sqlite:///{auth_dir / 'basic_auth.db'}",
        "admin_username": settings.admin_username,
        "authorization_function": PLUGIN,
        "grant_default_workspace_access": "false",
        # MLflow checks a password with a deliberately slow hash (seconds on a busy 2-core machine)
        # on every request; remembering a good one for as long as we cache decisions anyway keeps
        # the supervisor's lookups (made as the admin) and users' MLflow calls fast.
        "auth_cache_ttl_seconds": str(max(0, round(settings.auth_cache_seconds))),
    }
    text = io.StringIO()
    config.write(text)
    ini = auth_dir / "basic_auth.ini"
    ini.write_text(text.getvalue())
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": kept_secret(auth_dir / "flask_secret_key"),
        "MLFLOW_AUTH_ADMIN_USERNAME": settings.admin_username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
    }


def client_env(settings: Settings, password: str) -> dict[str, str]:
    """Credentials the supervisor's own processes use: the API (permission lookups) and the
    reconciler (MlflowClient reads the registry as the admin). Model hosts never get them."""
    return {
        "MODELSERVE_ADMIN_USERNAME": settings.admin_username,
        "MODELSERVE_ADMIN_PASSWORD": password,
        "MLFLOW_TRACKING_USERNAME": settings.admin_username,
        "MLFLOW_TRACKING_PASSWORD": password,
    }


# Variables a model's own code must never see (the process runtime strips them).
SECRET_ENV = ("MODELSERVE_ADMIN_PASSWORD", "MODELSERVE_ADMIN_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME",
              "MLFLOW_TRACKING_TOKEN", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
              "MODELSERVE_WEBHOOK_SECRET", "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", "MODELSERVE_TOKEN")


def without_secrets(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in SECRET_ENV}


CHECK_TRIES = 5
CHECK_PAUSE = 2.0


def check_admin(tracking_uri: str, username: str, password: str) -> str | None:
    """None when ``username``/``password`` is an MLflow admin; else what is wrong, in words."""
    # A server that has just started (or restarted, on a busy machine) may drop a first connection
    # or answer 5xx for a moment: a few tries, a few seconds apart, before `up` gives up.
    for attempt in range(CHECK_TRIES):
        try:
            resp = requests.get(f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/users/current",
                                auth=(username, password), timeout=30)
        except requests.RequestException as exc:
            if attempt + 1 == CHECK_TRIES:
                return f"cannot reach {tracking_uri}: {exc}"
            time.sleep(CHECK_PAUSE)
            continue
        if resp.status_code < 500 or attempt + 1 == CHECK_TRIES:
            break
        time.sleep(CHECK_PAUSE)
    if resp.status_code in (401, 403):
        return (f"MLflow refuses the admin credentials for '{username}' (the user database was made with "
                "another password: set MODELSERVE_ADMIN_PASSWORD to the current one)")
    if resp.status_code == 404:
        return f"{tracking_uri} has no auth app (start it with --app-name basic-auth, or use MODELSERVE_AUTH=off)"
    if resp.status_code != 200:
        return f"users/current answered {resp.status_code}"
    if not (resp.json().get("user") or {}).get("is_admin"):
        return f"MLflow user '{username}' is not an admin"
    return None
