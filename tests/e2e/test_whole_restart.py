"""Every process restarted (``modelserve down`` then ``up``): the same models enabled, the same
events, serving again; nothing recorded is lost. Runs last: it restarts the shared system."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pandas as pd
import pytest
import requests

from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e

NAME = "restart-model"


def test_down_and_up_keeps_everything_recorded(system: System, register: Any, iris: pd.DataFrame) -> None:
    register(NAME)
    assert system.api("POST", "enable", registered_model_name=NAME).status_code == 200
    system.wait_version(NAME, "1", "VERSION_STATE_READY")
    events_before = system.api("GET", "get-event-history", registered_model_name=NAME).json()["events"]
    enabled_before = {e["registered_model_name"] for e in system.api("GET", "list").json()["endpoints"]}

    down = system.cli("down")
    assert "stopped" in down.stdout
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{system.url}/api/2.0/modelserve/health", timeout=5)
    up = subprocess.run([sys.executable, "-m", "supervisor.cli", "up", "--detach"], env=system.env,
                        capture_output=True, text=True, timeout=400)
    assert up.returncode == 0, up.stdout + up.stderr

    # On a loaded machine the first access checks after a restart may meet a slow MLflow: a 503 with
    # Retry-After is a fair answer then, so the test retries like a client would.
    listed = system.wait_for("the serving API after up", lambda: (r := system.api("GET", "list")).status_code == 200
                             and r, timeout=120)
    enabled_after = {e["registered_model_name"] for e in listed.json()["endpoints"]}
    assert enabled_after == enabled_before and NAME in enabled_after
    system.wait_version(NAME, "1", "VERSION_STATE_READY")
    events_after = system.api("GET", "get-event-history", registered_model_name=NAME).json()["events"]
    assert events_after[-len(events_before):] == events_before  # the old ones, oldest last, unchanged
    rows = iris.drop(columns=["target"]).head(2).to_dict(orient="records")
    r = requests.post(f"{system.url}/model/{NAME}/1/invocations", json=rows, timeout=30)
    assert r.status_code == 200 and len(r.json()) == 2
