"""Faults the system heals by itself: a killed scoring server, a killed model host, a restarted
supervisor (adopted, not rebuilt), an unreachable registry."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests

from supervisor.runtime.process import ProcessRuntime
from supervisor.settings import Settings
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e

NAME = "recovery-model"


@pytest.fixture(scope="module")
def served(system: System, register: Any, iris: pd.DataFrame) -> dict[str, Any]:
    register(NAME)
    assert system.api("POST", "enable", registered_model_name=NAME).status_code == 200
    system.wait_version(NAME, "1", "VERSION_STATE_READY")
    rows = iris.drop(columns=["target"]).head(3).to_dict(orient="records")
    return {"url": f"{system.url}/model/{NAME}/1/invocations", "rows": rows}


def host_dir(system: System) -> Path:
    for info in (system.data_dir / "hosts").glob("*/host.json"):
        if json.loads(info.read_text())["model"] == NAME:
            return info.parent
    raise AssertionError("no host dir")


def status(system: System) -> dict[str, Any]:
    """The host's report, from inside the model's box: its pids are the box's own."""
    return dict(json.loads((host_dir(system) / "box" / "status.json").read_text()))


def outside(system: System, pid: int) -> int:
    """A pid of the box as this test sees it."""
    found = ProcessRuntime(Settings(data_dir=system.data_dir)).outside_pid(NAME, pid)
    assert found is not None, f"process {pid} of the box is not running"
    return found


def answers(served: dict[str, Any]) -> bool:
    try:
        return requests.post(served["url"], json=served["rows"], timeout=10).status_code == 200
    except requests.RequestException:
        return False


def messages(system: System) -> list[str]:
    events = system.api("GET", "get-event-history", registered_model_name=NAME).json()["events"]
    return [e["message"] for e in events]


def test_killed_scoring_server_is_restarted_by_its_host(system: System, served: dict[str, Any]) -> None:
    pid = status(system)["versions"]["1"]["pid"]
    os.kill(outside(system, pid), signal.SIGKILL)
    # Its forked workers outlive it and go on serving while the host starts its replacement.
    assert answers(served)
    system.wait_for("restart recorded", lambda: status(system)["versions"]["1"]["restarts"] >= 1, timeout=120)
    system.wait_for("answers again", lambda: answers(served), timeout=120)
    system.wait_for("the replacement at full capacity, the old workers gone", lambda: (
        v := status(system)["versions"]["1"])["pid"] != pid and v["workers"] == v["wanted_workers"]
        and not v["retiring"], timeout=120)
    system.wait_for("event", lambda: any("SIGKILL" in m and "restarted by the model host" in m
                                         for m in messages(system)), timeout=30)


def test_hung_scoring_server_is_killed_and_restarted_by_its_host(system: System, served: dict[str, Any]) -> None:
    from tests.e2e.procfind import parent_of

    # Judged only once its host has seen it answer (a server still loading is never killed), which
    # may lag the gateway's first answer by a probe interval: the previous test just restarted it.
    before = system.wait_for("the host sees it answer", lambda: (v := status(system)["versions"]["1"])["answering"]
                             and v, timeout=60)
    pid = outside(system, before["pid"])
    # Every process of the server (its forked workers too): alive, socket held, answering nothing.
    hung = [pid] + [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and parent_of(p.name) == pid]
    for p in hung:
        os.kill(p, signal.SIGSTOP)
    try:
        # The default window is 30 s of silence after the server had answered.
        system.wait_for("the host kills it", lambda: status(system)["versions"]["1"]["restarts"] > before["restarts"],
                        timeout=90)
    finally:
        for p in hung:
            try:
                os.kill(p, signal.SIGCONT)  # left to run if the host did not kill it (a failed test)
            except ProcessLookupError:
                pass
    assert "did not answer /ping" in status(system)["versions"]["1"]["last_exit"]
    system.wait_for("answers again", lambda: answers(served), timeout=60)
    system.wait_for("event", lambda: any("did not answer /ping" in m and "restarted by the model host" in m
                                         for m in messages(system)), timeout=30)


def test_killed_model_host_is_replaced_inside_its_box_and_its_servers_keep_serving(
        system: System, served: dict[str, Any]) -> None:
    box_pid = json.loads((host_dir(system) / "host.json").read_text())["pid"]
    host_pid, version_pid = status(system)["host_pid"], status(system)["versions"]["1"]["pid"]
    os.kill(outside(system, host_pid), signal.SIGKILL)
    assert answers(served)  # the host is not on the serving path
    system.wait_for("the box's keeper started a new host, which adopted the running server",
                    lambda: status(system)["host_pid"] != host_pid, timeout=120)
    assert status(system)["versions"]["1"]["pid"] == version_pid and answers(served)
    assert json.loads((host_dir(system) / "host.json").read_text())["pid"] == box_pid  # the same box
    system.wait_for("event", lambda: any("a new one was started in its place" in m and "kept serving" in m
                                         for m in messages(system)), timeout=60)
    assert system.versions(NAME)["1"]["state"] == "VERSION_STATE_READY"


def test_a_killed_box_is_started_again_by_the_supervisor(system: System, served: dict[str, Any]) -> None:
    box_pid = json.loads((host_dir(system) / "host.json").read_text())["pid"]
    os.kill(box_pid, signal.SIGKILL)  # bubblewrap's monitor: its namespace's first process goes with it
    system.wait_for("a new box", lambda: json.loads((host_dir(system) / "host.json").read_text())["pid"] != box_pid,
                    timeout=120)
    system.wait_for("event", lambda: any("Model host exited unexpectedly" in m for m in messages(system)),
                    timeout=60)
    system.wait_version(NAME, "1", "VERSION_STATE_READY")
    system.wait_for("answers again", lambda: answers(served), timeout=120)


def test_restarted_supervisor_adopts_the_running_host(system: System, served: dict[str, Any]) -> None:
    host_pid = json.loads((host_dir(system) / "host.json").read_text())["pid"]
    version_pid = status(system)["versions"]["1"]["pid"]
    up = json.loads((system.data_dir / "run" / "up.json").read_text())
    for name in ("reconciler", "api"):
        os.killpg(up["children"][name], signal.SIGKILL)
    # Serving never depended on them.
    assert answers(served)
    system.wait_for("supervisor back", lambda: system.api("GET", "list").status_code == 200, timeout=60)
    time.sleep(3)  # a few reconcile ticks
    assert json.loads((host_dir(system) / "host.json").read_text())["pid"] == host_pid
    assert status(system)["versions"]["1"]["pid"] == version_pid
    assert system.versions(NAME)["1"]["state"] == "VERSION_STATE_READY"
    assert answers(served)
