"""The MLflow registry unreachable for a while, with the real parts and access control on: the
embedded ``mlflow server`` is frozen with SIGSTOP (it still accepts connections and answers none,
like a partitioned or hung server: the hardest case for a client) and thawed with SIGCONT.

While it is frozen: a token holder's scoring of what was served keeps working; the health
endpoint, ``modelserve status`` and the status page say the registry is unreachable. After it
returns: the reconciler says so and catches up: a stage move made right then is applied.
One outage serves the whole module (the ``outage`` fixture records what happened during it).
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
# default) to run out while the registry is away, counted from when the outage was reported.
OUTAGE_AFTER_DETECTION = 12.0


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
    first = system.wait_for("Production routed", lambda: answer(system, prod, rows), timeout=120)
    return {"prod": prod, "v1": f"{system.url}/model/{NAME}/1/invocations", "rows": rows, "first": first}


@pytest.fixture(scope="module")
def outage(system: System, served: dict[str, Any]) -> dict[str, Any]:
    """One outage for the module: what the system said and did while it lasted, and after."""
    up = json.loads((system.data_dir / "run" / "up.json").read_text())
    token = {"Authorization": f"Bearer {system.token}"}
    seen: dict[str, Any] = {"before": health(system)}
    with Load([served["prod"], served["v1"]], served["rows"], headers=token) as load:
        time.sleep(1)
        with frozen(up["children"]["mlflow"]):
            stopped = time.monotonic()
            seen["health"] = system.wait_for("the registry reported unreachable", lambda: (
                h := health(system))["registry"] == "unreachable" and h, timeout=120)
            detected = time.monotonic()
            seen["detected_after"] = detected - stopped
            seen["cli"] = system.cli("status", check=False)
            time.sleep(max(0.0, OUTAGE_AFTER_DETECTION - (time.monotonic() - detected)))
            # A signed-in reader's page; a hang is an answer too, recorded as such. Generous for a
            # loaded machine, yet short enough that detection + this wait + the sleep above stay
            # well inside MODELSERVE_AUTH_STALE_SECONDS (300 s), which the load relies on.
            try:
                seen["page"] = system.raw.get(f"{system.url}/serving/", headers=token, timeout=60)
            except requests.RequestException as exc:
                seen["page"] = exc
        thawed = time.monotonic()
        seen["frozen_for"] = thawed - stopped
        system.wait_for("the registry reachable again", lambda: health(system)["registry"] == "reachable",
                        timeout=120)
        seen["recovered_after"] = time.monotonic() - thawed
    seen["load"] = load
    print(f"\nregistry outage: {seen['frozen_for']:.1f} s frozen, reported after {seen['detected_after']:.1f} s, "
          f"reachable again {seen['recovered_after']:.1f} s after it returned; scoring with a token: {load.ok} ok, "
          f"{len(load.failures)} failed, slowest {load.slowest:.1f} s; first failures: {load.failures[:2]}")
    return seen


def test_status_says_the_registry_is_unreachable(system: System, outage: dict[str, Any]) -> None:
    assert outage["before"]["registry"] == "reachable"
    assert outage["health"]["registry_error"]
    assert "registry is UNREACHABLE" in outage["cli"].stdout, outage["cli"].stdout + outage["cli"].stderr
    events = [e["message"] for e in system.api("GET", "get-event-history", registered_model_name=NAME)
              .json()["events"]]
    assert any(m.startswith("Model registry unreachable; serving continues unchanged") for m in events)
    assert any(m.startswith("Model registry reachable again") for m in events)


def test_token_holders_keep_scoring_while_the_registry_is_away(outage: dict[str, Any]) -> None:
    # Every access decision needs MLflow: they pass on the gateway's cached decisions served stale
    # and the API's last known ones (MODELSERVE_AUTH_STALE_SECONDS), past every cache's lifetime.
    load = outage["load"]
    assert load.ok > 0
    assert load.failures == [], load.failures[:5]


def test_a_signed_in_status_page_shows_the_banner(outage: dict[str, Any]) -> None:
    page = outage["page"]
    assert isinstance(page, requests.Response), page
    assert page.status_code == 200 and "The model registry is unreachable" in page.text, page.text[:500]


def test_the_reconciler_catches_up_once_the_registry_is_back(
        system: System, served: dict[str, Any], outage: dict[str, Any]) -> None:
    # Made right after the outage: a stage move, which no webhook announces (only the tick sees it).
    MlflowClient(system.url).transition_model_version_stage(NAME, "1", "Staging")
    staging = f"{system.url}/model/{NAME}/Staging/invocations"
    system.wait_for("Staging routed", lambda: answer(system, staging, served["rows"]) == served["first"],
                    timeout=120)
    system.wait_for("Production unrouted", lambda: requests.post(
        served["prod"], json=served["rows"], timeout=30).status_code == 404, timeout=120)
    assert system.versions(NAME)["1"]["state"] == "VERSION_STATE_READY"
