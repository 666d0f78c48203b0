"""Every process restarted, twice: ``modelserve down`` then ``up``, and a SIGKILL of every process
(launcher, mlflow server, reconciler, API, Nginx, model hosts and their scoring servers) then
``up``. Each time: the same models enabled, the same events, the same tokens (one made before
still works, one revoked before still fails), the metrics counters not lower than before, serving
again. Runs last: it restarts the shared system. The docker runtime's restart is test_docker.py's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from typing import Any

import pandas as pd
import pytest
import requests

from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e

NAME = "restart-model"
TOKENS = "/api/2.0/modelserve/tokens"
_COUNTER = re.compile(r"^(modelserve_\w+_total(?:\{[^}]*\})?) (\d+(?:\.\d+)?)$", re.M)


def counters(system: System) -> dict[str, float]:
    """Every Prometheus counter of the system, by name and labels."""
    text = system.raw.get(f"{system.url}/metrics", auth=system.admin, timeout=30).text
    return {key: float(value) for key, value in _COUNTER.findall(text)}


def score(system: System, token: str, rows: list[dict[str, Any]]) -> int:
    r = system.raw.post(f"{system.url}/model/{NAME}/1/invocations", json=rows,
                        headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return r.status_code


def make_token(system: System, comment: str) -> tuple[str, str]:
    r = system.raw.post(f"{system.url}{TOKENS}/create", json={"comment": comment}, auth=system.admin, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["token_value"], r.json()["token_info"]["token_id"]


def record(system: System) -> dict[str, Any]:
    return {
        "enabled": {e["registered_model_name"] for e in system.api("GET", "list").json()["endpoints"]},
        "events": system.api("GET", "get-event-history", registered_model_name=NAME).json()["events"],
        "counters": counters(system),
    }


def up_again(system: System) -> None:
    # As long as the first start's (conftest.py): mlflow server alone can take over a minute loaded.
    up = subprocess.run([sys.executable, "-m", "supervisor.cli", "up", "--detach"], env=system.env,
                        capture_output=True, text=True, timeout=700)
    assert up.returncode == 0, up.stdout + up.stderr
    # On a loaded machine the first access checks after a restart may meet a slow MLflow: a 503 with
    # Retry-After is a fair answer then, so the test retries like a client would.
    system.wait_for("the serving API after up", lambda: system.api("GET", "list").status_code == 200, timeout=120)


def assert_kept(system: System, before: dict[str, Any], tokens: dict[str, str], rows: list[dict[str, Any]]) -> None:
    after = record(system)
    assert after["enabled"] == before["enabled"] and NAME in after["enabled"]
    assert after["events"][-len(before["events"]):] == before["events"]  # the old ones, oldest last, unchanged
    system.wait_version(NAME, "1", "VERSION_STATE_READY")
    assert system.wait_for("the kept token scores", lambda: score(system, tokens["kept"], rows) == 200, timeout=120)
    assert score(system, tokens["revoked"], rows) == 401
    lower = {k: (v, after["counters"].get(k)) for k, v in before["counters"].items()
             if after["counters"].get(k, -1) < v}
    assert not lower, f"counters went back: {lower}"


@pytest.fixture(scope="module")
def kept(system: System, register: Any, iris: pd.DataFrame) -> dict[str, Any]:
    register(NAME)
    assert system.api("POST", "enable", registered_model_name=NAME).status_code == 200
    system.wait_version(NAME, "1", "VERSION_STATE_READY")
    rows = iris.drop(columns=["target"]).head(2).to_dict(orient="records")
    tokens = {"kept": make_token(system, "kept across restarts")[0]}
    revoked, revoked_id = make_token(system, "revoked before the restarts")
    assert score(system, revoked, rows) == 200
    r = system.raw.post(f"{system.url}{TOKENS}/delete", json={"token_id": revoked_id}, auth=system.admin, timeout=30)
    assert r.status_code == 200, r.text
    tokens["revoked"] = revoked
    for _ in range(5):
        assert score(system, tokens["kept"], rows) == 200
    # Counted once the reconciler has read the access log (it does every second).
    system.wait_for("the requests counted", lambda: sum(
        v for k, v in counters(system).items()
        if k.startswith("modelserve_requests_total") and f'model="{NAME}"' in k) >= 6, timeout=120)
    return {"tokens": tokens, "rows": rows}


def test_down_and_up_keeps_everything_recorded(system: System, kept: dict[str, Any]) -> None:
    before = record(system)
    down = system.cli("down")
    assert "stopped" in down.stdout
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{system.url}/api/2.0/modelserve/health", timeout=5)
    up_again(system)
    assert_kept(system, before, kept["tokens"], kept["rows"])


def test_sigkill_of_every_process_then_up_keeps_everything_recorded(system: System, kept: dict[str, Any]) -> None:
    before = record(system)
    up = json.loads((system.data_dir / "run" / "up.json").read_text())
    groups = [*up["children"].values(), int((system.data_dir / "nginx" / "nginx.pid").read_text())]
    # Each model's box: its first process's group holds bubblewrap and its namespace's init, and
    # the whole box ends with that init.
    groups += [json.loads(p.read_text())["pid"] for p in (system.data_dir / "hosts").glob("*/host.json")]
    os.kill(up["launcher_pid"], signal.SIGKILL)  # first, so it restarts nothing
    for pgid in groups:  # each leads its own process group
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{system.url}/api/2.0/modelserve/health", timeout=5)
    up_again(system)
    assert_kept(system, before, kept["tokens"], kept["rows"])
    system.wait_for("an event saying the host had died", lambda: any(
        "Model host exited unexpectedly" in e["message"]
        for e in system.api("GET", "get-event-history", registered_model_name=NAME).json()["events"]), timeout=120)
