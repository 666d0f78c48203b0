"""compose.yaml runs the whole stack: validated by the Compose CLI (``make docker-engine`` installs
docker-compose) and its essential structure checked with a YAML parser."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_has_the_whole_stack() -> None:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = data["services"]
    assert set(services) >= {"postgres", "mlflow", "supervisor"}
    mlflow = " ".join(services["mlflow"]["command"])
    assert "postgresql://" in mlflow and "--artifacts-destination=/mlflow-artifacts" in mlflow
    assert any(v.startswith("mlflow-artifacts:") for v in services["mlflow"]["volumes"])
    sup = services["supervisor"]
    assert sup["environment"]["MODELSERVE_RUNTIME"] == "docker"
    assert sup["environment"]["MODELSERVE_DOCKER_NETWORK"] in data["networks"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in sup["volumes"]
    assert any(str(p).endswith(":8080") for p in sup["ports"])
    for service in services.values():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_compose_cli_accepts_the_file() -> None:
    if shutil.which("docker-compose"):
        cmd = ["docker-compose", "-f", str(ROOT / "compose.yaml"), "config", "-q"]
    elif shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        cmd = ["docker", "compose", "-f", str(ROOT / "compose.yaml"), "config", "-q"]
    else:
        cmd = []
    assert cmd, "no Compose CLI: `make docker-engine` installs docker-compose"
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
