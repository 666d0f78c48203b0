"""The parts behind the gateway's access checks, started for a benchmark: MLflow's auth app and our API.

A benchmark of the full path must pay for authentication as users do, so nothing here is faked:
a real ``mlflow server --app-name basic-auth`` (its own SQLite store in the work dir), the
supervisor's API under gunicorn asking it (the gateway's ``auth_request`` goes there), and a
non-admin user with a password and a modelserve token. The caller's ``Settings`` decide the
ports, the admin password and the decision cache, so the gateway built from the same
``Settings`` points at this API. Everything is started in its own process group and stopped at
the end, whatever happened in between.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from supervisor.auth import bootstrap, tokens
from supervisor.settings import Settings
from supervisor.store import Store
from tests.benchmarks.procs import spawn, stop, wait_ping
from tests.support import free_port


@dataclass(frozen=True)
class AuthStack:
    settings: Settings
    user: tuple[str, str]  # a non-admin MLflow user and its password
    token: str  # a modelserve token of that user

    @property
    def bearer(self) -> str:
        return f"Bearer {self.token}"

    @property
    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.user[0]}:{self.user[1]}".encode()).decode()


def auth_settings(work: Path) -> Settings:
    """Settings on free loopback ports with a fresh admin password, data under ``work/data``."""
    mlflow_port = free_port()
    return Settings(data_dir=work / "data", port=free_port(), api_port=free_port(), mlflow_port=mlflow_port,
                    tracking_uri=f"http://127.0.0.1:{mlflow_port}", admin_password="bench-" + os.urandom(8).hex())


@contextlib.contextmanager
def running(settings: Settings, work: Path) -> Iterator[AuthStack]:
    """MLflow basic-auth + the API for ``settings`` (which needs ``tracking_uri`` on its
    ``mlflow_port`` and an ``admin_password``; see ``auth_settings``); logs go to ``work``."""
    bindir = Path(sys.executable).parent
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = {**os.environ, **bootstrap.mlflow_server_env(settings, settings.admin_password)}
        procs.append(spawn([str(bindir / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                            str(settings.mlflow_port), "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
                            "--app-name", "basic-auth", "--workers", "1"], env, work / "mlflow.log"))
        wait_ping(f"http://127.0.0.1:{settings.mlflow_port}/health", 300)
        admin = (settings.admin_username, settings.admin_password)
        user = ("bench-user", "bench-pw-" + os.urandom(6).hex())
        r = requests.post(f"{settings.tracking_uri}/api/2.0/mlflow/users/create", auth=admin, timeout=30,
                          json={"username": user[0], "password": user[1]})
        r.raise_for_status()
        token, _ = tokens.create_token(Store(settings.resolved_store_url), user[0], "benchmark")
        api_env = {**os.environ, "MODELSERVE_DATA_DIR": str(settings.data_dir),
                   "MODELSERVE_API_PORT": str(settings.api_port), "MODELSERVE_TRACKING_URI": settings.tracking_uri,
                   "MODELSERVE_ADMIN_USERNAME": settings.admin_username,
                   "MODELSERVE_ADMIN_PASSWORD": settings.admin_password,
                   "MODELSERVE_AUTH_CACHE_SECONDS": str(settings.auth_cache_seconds)}
        procs.append(spawn([str(bindir / "gunicorn"), "--workers", str(settings.api_workers), "--threads",
                            str(settings.api_threads), "--bind", f"127.0.0.1:{settings.api_port}",
                            "supervisor.api.wsgi:app"], api_env, work / "api.log"))
        wait_ping(f"{settings.api_url}/api/2.0/modelserve/health")
        yield AuthStack(settings, user, token)
    finally:
        stop(procs)
