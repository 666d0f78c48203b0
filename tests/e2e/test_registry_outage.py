"""The MLflow registry unreachable for a while, with the real parts and access control on: the
embedded ``mlflow server`` is frozen with SIGSTOP (it still accepts connections and answers none,
like a partitioned or hung server: the hardest case for a client) and thawed with SIGCONT.

While it is frozen: a token holder's scoring of what was served keeps working; the health
endpoint, ``modelserve status`` and the status page say the registry is unreachable. After it
returns: the reconciler says so and catches up: a version registered and moved to Production right
then is deployed and the stage URI follows it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from tests.e2e.conftest import System
from tests.e2e.load import Load

pytestmark = pytest.mark.e2e

NAME = "outage-model"
# Long enough for every cache of an access decision (MODELSERVE_AUTH_CACHE_SECONDS, 10 s by
# default) to run out while the registry is away.
OUTAGE_AFTER_DETECTION = 15.0


@contextlib.contextmanager
def frozen(pgid: int) -> Iterator[None]:
    """The process group stopped for the block; continued whatever happens inside it."""
    os.killpg(pgid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(pgid, signal.SIGCONT)


def health(system: System) -> dict[str, Any]:
    return dict(system.raw.get(f"{system.url}/api/2.0/modelserve/health", timeout=30).json())


def answer(system: System, url: str, rows: list[dict[str, Any]]) -> list[Any] | None:
    r = system.raw.post(url, json=rows, headers={"Authorization": f"Bearer {system.token}"}, timeout=30)
    return list(r.json()) if r.status_code == 200 else None


@pytest.fixture(scope="module")
def served(system: System, register: Callable[..., str], iris: pd.DataFrame) -> dict[str, Any]:
    assert register(NAME) == "1"
    assert system.api("POST", "enable", registered_model_name=NAME).status_code == 200
    system.wait_version(NAME, "1", "VERSION_STATE_READY")
    MlflowClient(system.url).transition_model_version_stage(NAME, "1", "Production")
    rows = iris.drop(columns=["target"]).head(3).to_dict(orient="records")
    prod = f"{system.url}/model/{NAME}/Production/invocations"
    first = system.wait_for("Production routed", lambda: answer(system, prod, rows), timeout=60)
    return {"prod": prod, "v1": f"{system.url}/model/{NAME}/1/invocations", "rows": rows, "first": first}


def test_serving_goes_on_and_status_tells_while_the_registry_is_away(
        system: System, register: Callable[..., str], served: dict[str, Any]) -> None:
    up = json.loads((system.data_dir / "run" / "up.json").read_text())
    token = {"Authorization": f"Bearer {system.token}"}
    assert health(system)["registry"] == "reachable"
    with Load([served["prod"], served["v1"]], served["rows"], headers=token) as load:
        time.sleep(1)
        with frozen(up["children"]["mlflow"]):
            stopped = time.monotonic()
            seen = system.wait_for("the registry reported unreachable",
                                   lambda: (h := health(system))["registry"] == "unreachable" and h, timeout=90)
            detected = time.monotonic() - stopped
            cli = system.cli("status", check=False)
            page = system.raw.get(f"{system.url}/", headers=token, timeout=60)
            time.sleep(OUTAGE_AFTER_DETECTION)
            status = system.raw.get(f"{system.url}/api/2.0/preview/mlflow/endpoints/get-status",
                                    params={"registered_model_name": NAME}, headers=token, timeout=60)
        thawed = time.monotonic()
        system.wait_for("the registry reachable again", lambda: health(system)["registry"] == "reachable",
                        timeout=90)
        recovered = time.monotonic() - thawed
    print(f"\nregistry outage: {thawed - stopped:.1f} s frozen, reported after {detected:.1f} s, "
          f"reachable again after {recovered:.1f} s; scoring: {load.ok} ok, {len(load.failures)} failed, "
          f"slowest {load.slowest:.1f} s")
    assert seen["registry_error"]
    assert "UNREACHABLE" in cli.stdout, cli.stdout + cli.stderr
    assert page.status_code == 200 and "The model registry is unreachable" in page.text, page.text[:1000]
    assert status.status_code == 200, status.text
    assert "model registry unreachable" in status.json()["endpoint_status"]["state_message"]
    assert load.failures == [], load.failures[:5]
    assert load.ok > 0
    events = [e["message"] for e in system.api("GET", "get-event-history", registered_model_name=NAME)
              .json()["events"]]
    assert any(m.startswith("Model registry unreachable") for m in events)
    assert any(m.startswith("Model registry reachable again") for m in events)


def test_the_reconciler_catches_up_once_the_registry_is_back(
        system: System, register: Callable[..., str], served: dict[str, Any]) -> None:
    # Made right after the outage: a new version, moved to Production at once.
    version = register(NAME, label_shift=1)
    MlflowClient(system.url).transition_model_version_stage(NAME, version, "Production",
                                                            archive_existing_versions=True)
    system.wait_version(NAME, version, "VERSION_STATE_READY")
    moved = system.wait_for("Production follows the new version", lambda: (
        a := answer(system, served["prod"], served["rows"])) is not None and a != served["first"] and a,
        timeout=60)
    assert moved == answer(system, f"{system.url}/model/{NAME}/{version}/invocations", served["rows"])
    system.wait_for("the archived version unrouted", lambda: "1" not in system.versions(NAME), timeout=60)
    assert requests.post(served["v1"], json=served["rows"], timeout=30).status_code == 404
