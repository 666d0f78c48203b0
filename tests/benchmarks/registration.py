"""Time from registering a model version to READY, on a whole system (process runtime).

The system is started as a user would (``modelserve up --detach``, real ``mlflow server``,
Nginx, reconciler) in a temporary data dir on free loopback ports. Version 1 of a model finds
the environment cache empty (cold: the environment is built, uv's own package cache is whatever
the machine has); version 2 has the same requirements (warm: the environment is reused). The
clock starts when ``log_model(..., registered_model_name=...)`` returns and stops when
``list-versions`` says READY, which promises the gateway already routes the version.
With authentication on (the default) the system gets a known admin password and this process
talks as that admin, as a team's CI would: MLflow's client through ``MLFLOW_TRACKING_USERNAME``/
``PASSWORD`` (restored afterwards), the endpoint calls with basic auth.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from tests.support import free_port

API = "/api/2.0/preview/mlflow/endpoints"


def _state(url: str, model: str, version: str, auth: tuple[str, str] | None) -> str:
    r = requests.get(f"{url}{API}/list-versions", params={"registered_model_name": model}, auth=auth, timeout=30)
    if r.status_code != 200:
        return ""
    for v in r.json().get("endpoint_versions", []):
        if v.get("endpoint_version_name") == version:
            return str(v.get("state", ""))
    return ""


def _wait_ready(url: str, model: str, version: str, auth: tuple[str, str] | None, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(url, model, version, auth)
        if state == "VERSION_STATE_READY":
            return
        if "FAILED" in state:
            raise RuntimeError(f"{model} v{version} failed to deploy")
        time.sleep(0.1)
    raise RuntimeError(f"{model} v{version} not ready after {timeout:.0f} s")


def measure(model_factory: Any, auth: bool = True) -> list[tuple[str, float]]:
    """[(label, seconds)] for a cold and a warm registration; ``model_factory(i)`` -> (sk model, example)."""
    import mlflow.sklearn

    data = Path(tempfile.mkdtemp(prefix="modelserve-bench-reg-"))
    port = free_port()
    base = 30000 + (os.getpid() % 200) * 100
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update({
        "MODELSERVE_DATA_DIR": str(data), "MODELSERVE_PORT": str(port), "MODELSERVE_API_PORT": str(free_port()),
        "MODELSERVE_MLFLOW_PORT": str(free_port()), "MODELSERVE_PORT_RANGE_START": str(base),
        "MODELSERVE_PORT_RANGE_END": str(base + 99),
        "PATH": f"{Path(sys.executable).parent}:/usr/sbin:{env.get('PATH', '')}",
    })
    admin: tuple[str, str] | None = None
    client_env: dict[str, str] = {}
    if auth:
        admin = ("admin", "bench-admin-" + os.urandom(8).hex())
        client_env = {"MLFLOW_TRACKING_USERNAME": admin[0], "MLFLOW_TRACKING_PASSWORD": admin[1]}
        env.update({"MODELSERVE_ADMIN_PASSWORD": admin[1], **client_env})
    else:
        env["MODELSERVE_AUTH"] = "off"
    saved = {k: os.environ.get(k) for k in client_env}
    url = f"http://127.0.0.1:{port}"
    up = subprocess.run([sys.executable, "-m", "supervisor.cli", "up", "--detach"], env=env, capture_output=True,
                        text=True, timeout=400)
    out: list[tuple[str, float]] = []
    try:
        if up.returncode != 0:
            raise RuntimeError(f"modelserve up failed:\n{up.stdout}\n{up.stderr}")
        os.environ.update(client_env)
        mlflow.set_tracking_uri(url)
        name = "bench-registration"
        for i, label in enumerate(("cold environment cache", "warm environment cache")):
            model, example = model_factory(i)
            with mlflow.start_run():
                info = mlflow.sklearn.log_model(model, name="model", input_example=example, registered_model_name=name,
                                                serialization_format="cloudpickle")
            version = str(info.registered_model_version)
            t0 = time.monotonic()
            if i == 0:
                r = requests.post(f"{url}{API}/enable", json={"registered_model_name": name}, auth=admin, timeout=30)
                r.raise_for_status()
            _wait_ready(url, name, version, admin)
            out.append((label, time.monotonic() - t0))
    finally:
        subprocess.run([sys.executable, "-m", "supervisor.cli", "down"], env=env, capture_output=True, timeout=120)
        subprocess.run(["rm", "-rf", str(data)], check=False)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out
