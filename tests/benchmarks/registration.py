"""Time from registering a model version to READY, on a whole system (process runtime).

The system is started as a user would (``modelserve up --detach``, real ``mlflow server``,
Nginx, reconciler) in a temporary data dir on free loopback ports. Version 1 of a model finds
the environment cache empty (cold: the environment is built, uv's own package cache is whatever
the machine has); version 2 has the same requirements (warm: the environment is reused). The
clock starts when ``log_model(..., registered_model_name=...)`` returns and stops when
``list-versions`` says READY, which promises the gateway already routes the version.
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


def _state(url: str, model: str, version: str) -> str:
    r = requests.get(f"{url}{API}/list-versions", params={"registered_model_name": model}, timeout=30)
    if r.status_code != 200:
        return ""
    for v in r.json().get("endpoint_versions", []):
        if v.get("endpoint_version_name") == version:
            return str(v.get("state", ""))
    return ""


def _wait_ready(url: str, model: str, version: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(url, model, version)
        if state == "VERSION_STATE_READY":
            return
        if "FAILED" in state:
            raise RuntimeError(f"{model} v{version} failed to deploy")
        time.sleep(0.1)
    raise RuntimeError(f"{model} v{version} not ready after {timeout:.0f} s")


def measure(model_factory: Any) -> list[tuple[str, float]]:
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
    url = f"http://127.0.0.1:{port}"
    up = subprocess.run([sys.executable, "-m", "supervisor.cli", "up", "--detach"], env=env, capture_output=True,
                        text=True, timeout=400)
    out: list[tuple[str, float]] = []
    try:
        if up.returncode != 0:
            raise RuntimeError(f"modelserve up failed:\n{up.stdout}\n{up.stderr}")
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
                r = requests.post(f"{url}{API}/enable", json={"registered_model_name": name}, timeout=30)
                r.raise_for_status()
            _wait_ready(url, name, version)
            out.append((label, time.monotonic() - t0))
    finally:
        subprocess.run([sys.executable, "-m", "supervisor.cli", "down"], env=env, capture_output=True, timeout=120)
        subprocess.run(["rm", "-rf", str(data)], check=False)
    return out
