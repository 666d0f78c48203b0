"""compose.yaml runs the whole stack: validated by the Compose CLI (``make docker-engine`` installs
docker-compose) and its essential structure checked with a YAML parser: the services and their
healthchecks, MLflow's auth app, generated secrets (no password in the file), the gateway on
loopback only, every image built FROM the BASE_IMAGE argument. The stack's helper roles
(supervisor/stack.py) and its labels for model containers are tested here too; tests/e2e/
test_compose.py runs the stack for real."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor import stack
from supervisor.runtime.docker import COMPOSE_SERVICE, compose_labels

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


def test_compose_file_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"secrets", "postgres", "mlflow", "gateway", "supervisor"}
    for name in ("postgres", "mlflow", "gateway", "supervisor"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"
        assert services[name]["restart"] == "unless-stopped"
    assert set(compose["volumes"]) >= {"secrets", "postgres-data", "mlflow-artifacts"}
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql://" in mlflow and "--artifacts-destination=/mlflow-artifacts" in mlflow
    assert any(v.startswith("mlflow-artifacts:") for v in services["mlflow"]["volumes"])
    # MLflow's basic-auth app: supervisor/stack.py adds --app-name basic-auth to what it is given.
    assert services["mlflow"]["entrypoint"][-2:] == ["supervisor.stack", "mlflow"]
    assert services["mlflow"]["environment"]["MODELSERVE_MLFLOW_AUTH_DB"].startswith("postgresql://")
    sup = services["supervisor"]
    env = sup["environment"]
    assert env["MODELSERVE_COMPOSE"] == "true"
    assert env["MODELSERVE_STORE_URL"].startswith("postgresql+psycopg://")
    assert env["MODELSERVE_TRACKING_URI"] == "http://mlflow:5000"
    assert "/var/run/docker.sock:/var/run/docker.sock" in sup["volumes"]
    # The data dir is a host path mounted at the same path (the engine resolves model containers'
    # bind mounts on the host), and the gateway sees it the same way.
    data = "${MODELSERVE_HOST_DATA_DIR:-/var/lib/modelserve}"
    assert env["MODELSERVE_DATA_DIR"] == data
    for name in ("supervisor", "gateway"):
        assert f"{data}:{data}" in services[name]["volumes"]
    # The supervisor shares only the data dir with the gateway (a swarm service can share nothing
    # else): Nginx reaches the API on a Unix socket there, and reloads through its control socket.
    assert "network_mode" not in sup and "pid" not in sup
    assert sup["networks"] == ["modelserve"]
    assert services["gateway"]["init"] is True
    assert env["MODELSERVE_RUNTIME"] == "${MODELSERVE_RUNTIME:-docker}"


def test_the_stack_keys_keep_every_part_on_the_control_node(compose: dict[str, Any]) -> None:
    """`docker stack deploy` reads the deploy keys: each service on the labelled manager (its
    volumes and the shared data dir are that node's), names resolved without IPVS (dnsrr), and the
    one-shot not restarted once done; depends_on in the list form the stack's loader accepts."""
    for name, service in compose["services"].items():
        deploy = service["deploy"]
        assert "node.labels.modelserve.control == true" in deploy["placement"]["constraints"], name
        assert "node.role == manager" in deploy["placement"]["constraints"], name
        if name == "secrets":
            assert deploy["restart_policy"] == {"condition": "on-failure"}
        else:
            assert deploy["endpoint_mode"] == "dnsrr", name
        assert isinstance(service.get("depends_on", []), list), name
    stack = yaml.safe_load((ROOT / "images" / "stack.yaml").read_text())
    # Debian's docker CLI (20.10) deploys no file without a version, nor two of different ones.
    assert compose["version"] == stack["version"] == "3.8"
    assert stack["services"]["gateway"]["ports"] == [
        {"target": 8080, "published": "${MODELSERVE_GATEWAY_PORT:-8080}", "mode": "host"}]


def test_no_password_in_the_file(compose: dict[str, Any]) -> None:
    text = (ROOT / "compose.yaml").read_text()
    assert "password1234" not in text
    assert not re.search(r"(?i)(POSTGRES_PASSWORD|ADMIN_PASSWORD)\s*:", text)
    assert not re.search(r"postgres(ql)?(\+\w+)?://[^@\s]*:[^@\s]*@", text), "a password in a database URL"
    postgres = compose["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"].startswith("/run/modelserve-secrets/")
    assert postgres["depends_on"] == ["secrets"]  # and it waits for the password file itself


def test_the_gateway_is_the_only_published_port_and_on_loopback(compose: dict[str, Any]) -> None:
    published = {name: s.get("ports", []) for name, s in compose["services"].items() if s.get("ports")}
    assert list(published) == ["gateway"]
    [port] = published["gateway"]
    assert str(port).startswith("127.0.0.1:") and str(port).endswith(":8080")


def _from_lines(dockerfile: Path) -> list[str]:
    return [ln for ln in dockerfile.read_text().splitlines() if ln.startswith("FROM ")]


def test_every_image_builds_from_the_base_image_argument(compose: dict[str, Any]) -> None:
    builds = {name: s["build"] for name, s in compose["services"].items() if s.get("build")}
    assert set(builds) >= {"postgres", "supervisor"}
    for name, build in builds.items():
        dockerfile = ROOT / build["context"] / build["dockerfile"]
        assert dockerfile.is_file()
        assert build["args"]["BASE_IMAGE"] == "${BASE_IMAGE:-python:3.11-slim}", name
        text = dockerfile.read_text()
        assert "ARG BASE_IMAGE=python:3.11-slim" in text
        assert _from_lines(dockerfile) == ["FROM ${BASE_IMAGE}"], dockerfile
    # No service pulls an image it does not build.
    assert all(s.get("build") for s in compose["services"].values())


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


def test_secrets_are_made_once_and_kept(tmp_path: Path) -> None:
    root = tmp_path / "secrets"
    stack.make_secrets(root, postgres_uid=None)
    ours = root / "modelserve"
    first = {p.name: p.read_text() for p in (root / "postgres" / "password", ours / "admin_password",
                                             ours / "flask_secret_key", ours / "pgpass")}
    assert len(first["password"].strip()) >= 32
    assert first["pgpass"] == f"*:*:*:modelserve:{first['password'].strip()}\n"
    assert first["admin_password"].strip() not in ("", "password1234")
    for path in (root / "postgres", ours):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((ours / "pgpass").stat().st_mode) == 0o600  # libpq ignores a readable one
    stack.make_secrets(root, postgres_uid=None)
    again = {p.name: p.read_text() for p in (root / "postgres" / "password", ours / "admin_password",
                                             ours / "flask_secret_key", ours / "pgpass")}
    assert again == first


def test_stack_roles_refuse_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert stack.main([]) == 2
    assert stack.main(["nonsense"]) == 2
    assert stack.main(["ping", "http://127.0.0.1:9/", "--bogus"]) == 2
    assert "usage:" in capsys.readouterr().err
    assert stack.main(["ping", "http://127.0.0.1:9/"]) == 1  # nothing listens on the discard port


def test_model_containers_join_the_compose_project_as_one_offs() -> None:
    own = {"com.docker.compose.project": "ms", "com.docker.compose.service": "supervisor",
           "com.docker.compose.oneoff": "False", "com.docker.compose.config-hash": "x"}
    assert compose_labels(own) == {"com.docker.compose.project": "ms", "com.docker.compose.service": COMPOSE_SERVICE,
                                   "com.docker.compose.oneoff": "True"}
    assert compose_labels({}) == {}


def test_a_role_waits_for_its_parts_bounded_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`docker stack deploy` starts every service at once: a role waits for what it needs (said
    once), and gives up after its bound with the last reason, for the engine to restart it."""
    calls = []

    def ready_on_third() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("connection refused")
        return True

    stack.wait_for("the database", ready_on_third, timeout=30, poll=0.01)
    assert len(calls) == 3
    assert capsys.readouterr().out.count("waiting for the database (connection refused)") == 1
    with pytest.raises(SystemExit, match=r"the tracking server: not ready after 0 s \(not yet\)"):
        stack.wait_for("the tracking server", lambda: False, timeout=0.05, poll=0.01)


def test_the_parts_waited_for_are_the_secrets_then_the_database_then_mlflow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.settings import Settings

    secrets_dir = tmp_path / "secrets"
    monkeypatch.setenv("PGPASSFILE", str(secrets_dir / "pgpass"))
    settings = Settings(data_dir=tmp_path, secrets_dir=secrets_dir)
    # Nothing made yet: the admin password is what it waits for first.
    with pytest.raises(SystemExit, match="the admin password"):
        stack.wait_for_parts(settings, timeout=0.05)
    secrets_dir.mkdir()
    (secrets_dir / "admin_password").write_text("not-the-default\n")
    with pytest.raises(SystemExit, match="the Postgres password file"):
        stack.wait_for_parts(settings, timeout=0.05)
    (secrets_dir / "pgpass").write_text("*:*:*:modelserve:x\n")
    # Nothing listens on port 1 (and this venv may lack the driver): either way, not ready.
    with pytest.raises(SystemExit, match=r"the database 127\.0\.0\.1:1/x"):
        stack.wait_for_parts(settings, timeout=0.05, store_url="postgresql+psycopg://u@127.0.0.1:1/x")
    with pytest.raises(SystemExit, match=r"the tracking server http://127\.0\.0\.1:1"):
        stack.wait_for_parts(settings, timeout=0.05, tracking_uri="http://127.0.0.1:1")
