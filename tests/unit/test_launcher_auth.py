"""``modelserve up`` starts MLflow with its auth app unless told not to, and hands out credentials carefully."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.launcher import Launcher
from supervisor.settings import Settings


@pytest.fixture(autouse=True)
def embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    # The e2e tests (same session) point MLflow's client at their gateway, which would read as external.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MODELSERVE_TRACKING_URI", raising=False)


def test_auth_on_by_default(tmp_path: Path) -> None:
    launcher = Launcher(Settings(data_dir=tmp_path, admin_password="s3cret-admin"), echo=lambda _: None)
    mlflow = next(c for c in launcher._children() if c.name == "mlflow")
    i = mlflow.argv.index("--app-name")
    assert mlflow.argv[i + 1] == "basic-auth"
    # A slow uvicorn worker is not killed with the requests it holds (docs/RELIABILITY.md).
    assert mlflow.argv[-2:] == ["--uvicorn-opts", "--timeout-worker-healthcheck 60"]
    assert Path(mlflow.env["MLFLOW_AUTH_CONFIG_PATH"]).exists()
    # No job runner: a registry runs no GenAI jobs, and its consumers cost ~1 GB.
    assert mlflow.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    env = launcher._child_env()
    assert env["MODELSERVE_AUTH"] == "on" and env["MLFLOW_TRACKING_PASSWORD"] == "s3cret-admin"


def test_no_auth_is_explicit(tmp_path: Path) -> None:
    launcher = Launcher(Settings(data_dir=tmp_path, auth=False), echo=lambda _: None)
    mlflow = next(c for c in launcher._children() if c.name == "mlflow")
    assert "--app-name" not in mlflow.argv and mlflow.env == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env = launcher._child_env()
    assert env["MODELSERVE_AUTH"] == "off" and "MODELSERVE_ADMIN_PASSWORD" not in env
    assert not (tmp_path / "auth" / "admin_password").exists()


def test_up_says_each_part_of_the_box_this_machine_cannot_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor import launcher as launcher_module
    from supervisor.isolation.capabilities import Capabilities, Capability

    caps = Capabilities((Capability("identity", True, "identity: fine"),
                         Capability("cpu", False, "CPU limits NOT enforced: no controller")))
    monkeypatch.setattr(launcher_module, "runtime_capabilities", lambda runtime, sandbox, info: caps)
    said: list[str] = []
    Launcher(Settings(data_dir=tmp_path, auth=False), echo=said.append).report_isolation()
    assert said == ["isolation: CPU limits NOT enforced: no controller"]
