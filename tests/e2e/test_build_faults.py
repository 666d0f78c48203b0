"""Environment builds killed midway, on the process runtime, with the real parts: the uv that
installs a new version's requirements is SIGKILLed (as the out-of-memory killer would), then the
reconciler is SIGKILLed together with its build (as a crash would). Another version of the same
model serves under a steady load throughout. An uninstallable requirement is test_errors.py's.

What a user gets (docs/RELIABILITY.md, "Build faults, registry outage, restarts"):
* the build step killed: that version is FAILED, its message and build log name the signal (the
  user decides whether to try again: register the version again, or disable and enable), and no
  half-built environment is left;
* the reconciler killed mid-build: the restarted one sweeps the abandoned build folder at start and
  deploys the version again (it was never the version's fault), building the environment from
  scratch; it ends READY.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.e2e.conftest import System
from tests.e2e.load import Load
from tests.e2e.procfind import wait_for_process

pytestmark = pytest.mark.e2e

NAME = "build-faults"
REQUIREMENTS_FILE = ".modelserve-requirements.txt"  # supervisor/envs.py REQUIREMENTS_NAME


@pytest.fixture(scope="module")
def served(system: System, register: Callable[..., str], iris: pd.DataFrame) -> dict[str, Any]:
    assert register(NAME) == "1"
    assert system.api("POST", "enable", registered_model_name=NAME).status_code == 200
    system.wait_version(NAME, "1", "VERSION_STATE_READY")
    rows = iris.drop(columns=["target"]).head(3).to_dict(orient="records")
    return {"url": f"{system.url}/model/{NAME}/1/invocations", "rows": rows}


def requirements_install(envs_dir: Path) -> tuple[int, Path]:
    """(pid, build folder) of the first ``uv pip install -r <build folder>/.modelserve-requirements.txt``
    under ``envs_dir``: the long step of an environment build, caught while it runs."""
    prefix = str(envs_dir / ".building-")
    folders: list[Path] = []

    def installing(_pid: int, argv: list[str]) -> bool:
        if "install" in argv:
            folders.extend(Path(a).parent for a in argv if a.startswith(prefix) and a.endswith(REQUIREMENTS_FILE))
        return bool(folders)

    return wait_for_process("requirements install", installing), folders[0]


def build_log(system: System, version: str) -> str:
    return str(system.api("POST", "get-version-logs", registered_model_name=NAME,
                          endpoint_version_name=version).json()["logs"])


def building_folders(system: System) -> list[Path]:
    return list((system.data_dir / "envs").glob(".building-*"))


def test_builds_killed_midway_fail_alone_or_resume_and_leave_nothing_reused(
        system: System, register: Callable[..., str], served: dict[str, Any]) -> None:
    envs = system.data_dir / "envs"
    extra = ["pyyaml>=5.1"]  # already among mlflow's own: a new environment, nothing new to download
    reconciler_log = system.data_dir / "logs" / "reconciler.log"
    with Load([served["url"]], served["rows"]) as load, ThreadPoolExecutor(1) as pool:
        # 1. The build step killed from outside: that version fails, naming the signal.
        watching = pool.submit(requirements_install, envs)
        killed = register(NAME, extra_pip_requirements=extra)
        pid, folder = watching.result()
        env_hash = folder.name.split("-")[1]
        os.killpg(pid, signal.SIGKILL)  # uv leads its own process group (envs.py starts it so)
        failed = system.wait_version(NAME, killed, "VERSION_STATE_FAILED", timeout=120)
        assert "killed by SIGKILL" in failed["state_message"], failed
        assert "killed by SIGKILL" in build_log(system, killed)
        assert not folder.exists() and building_folders(system) == []
        assert not (envs / env_hash).exists()

        # 2. The same requirements again, and this time the reconciler dies with the build (a
        # crash; a lone reconciler kill leaves uv running with the hash's lock, which
        # tests/unit/test_envsweep.py covers): the restarted one sweeps the half-built folder
        # at start and builds the environment from scratch.
        starts = reconciler_log.read_text(errors="replace").count("reconciler running")
        up = json.loads((system.data_dir / "run" / "up.json").read_text())
        watching = pool.submit(requirements_install, envs)
        again = register(NAME, extra_pip_requirements=extra)
        pid, folder = watching.result()
        assert folder.name.split("-")[1] == env_hash
        os.killpg(up["children"]["reconciler"], signal.SIGKILL)
        os.killpg(pid, signal.SIGKILL)
        assert folder.exists()  # abandoned, half-built
        system.wait_for("a new reconciler", lambda: reconciler_log.read_text(errors="replace")
                        .count("reconciler running") > starts, timeout=120)
        system.wait_version(NAME, again, "VERSION_STATE_READY")
    assert f"removed the leftover of an interrupted environment build: {folder.name}" in \
        reconciler_log.read_text(errors="replace")
    assert building_folders(system) == []
    assert (envs / env_hash / ".modelserve-complete").is_file()
    log = build_log(system, again)
    assert log.count(f"building environment {env_hash}") == 2 and "reusing cached environment" not in log, log[-3000:]
    assert system.versions(NAME)[killed]["state"] == "VERSION_STATE_FAILED"
    assert system.versions(NAME)["1"]["state"] == "VERSION_STATE_READY"
    print(f"\nbuild faults: version 1 under load: {load.ok} ok, {len(load.failures)} failed, "
          f"slowest {load.slowest:.2f} s")
    assert load.failures == [], load.failures[:5]
    assert load.ok > 0
