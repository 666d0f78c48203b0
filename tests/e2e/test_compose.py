"""compose.yaml for real: the stack is built on the registry-free base image and brought up on the
real engine under a project name of its own, then used only through its gateway (published on
127.0.0.1), with the admin password the stack generated. One stack for the whole module (images
come from the layer cache after the first run; the model's environment image is the docker
runtime's own, shared with test_docker), one model, two versions. In order: serve and score by
version, stage and alias (the seed's curl and ``dataframe_split``) -> a new version deploys by
itself, the old one is archived -> a serving endpoint with an inference table stores every request
in the stack's Postgres -> ``restart supervisor`` under load loses nothing -> ``down`` + ``up``
keeps models, tokens, rows and scoring -> disable and enable -> ``down -v`` leaves nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import System, acting_as_admin
from tests.e2e.load import Load
from tests.e2e.test_docker import BASE_IMAGE, require_engine
from tests.support import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NAME = "iris-compose"
SERVICES = ("secrets", "postgres", "mlflow", "gateway", "supervisor")
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


def compose_cli() -> list[str]:
    """docker-compose 1.29 (what Debian ships), else the Compose v2 plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


def extra_ca_certs() -> str:
    """The host's CA certificates the base image lacks (a TLS-inspecting proxy's), for the build:
    the whole bundle would not fit in an environment variable."""
    from supervisor.runtime.images import ca_bundle

    bundle = ca_bundle(os.environ)
    if bundle is None:
        return ""
    base = subprocess.run(["docker", "run", "--rm", "--network", "none", BASE_IMAGE, "cat",
                           "/etc/ssl/certs/ca-certificates.crt"], capture_output=True, text=True, timeout=120)
    known = set(_PEM.findall(base.stdout))
    return "\n".join(c for c in _PEM.findall(bundle.read_text()) if c not in known)


def sources_tag() -> str:
    """A tag named by what the images are built from (the build context .dockerignore lets
    through): a stack of other sources on the same engine (another branch's CI) never runs ours."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted([ROOT / "pyproject.toml", ROOT / "compose.yaml",
                        *(p for d in ("supervisor", "nginx", "images") for p in (ROOT / d).rglob("*")
                          if p.is_file() and "__pycache__" not in p.parts)]):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return "src-" + digest.hexdigest()[:12]


class Stack:
    def __init__(self, data_dir: Path) -> None:
        self.project = f"modelserve-e2e-{secrets.token_hex(4)}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.env = {**os.environ, "BASE_IMAGE": BASE_IMAGE, "MODELSERVE_DOCKER_BASE_IMAGE": BASE_IMAGE,
                    "MODELSERVE_HOST_DATA_DIR": str(data_dir), "MODELSERVE_GATEWAY_PORT": str(self.port),
                    "MODELSERVE_CA_CERT": extra_ca_certs(), "MODELSERVE_RECONCILE_INTERVAL": "1",
                    "MODELSERVE_IMAGE_TAG": sources_tag()}
        # The stack's own variables only: a test session's MLflow settings are not the stack's.
        for name in ("MLFLOW_TRACKING_URI", "MODELSERVE_DATA_DIR", "MODELSERVE_URL"):
            self.env.pop(name, None)

    def compose(self, *args: str, timeout: float = 900) -> str:
        cmd = [*compose_cli(), "-p", self.project, "-f", str(ROOT / "compose.yaml"), *args]
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    def build(self) -> None:
        """The stack's images, once per engine: the swarm stack's test (test_stack.py) builds the
        same ones, maybe at the same time in another worker; the second finds the layer cache."""
        import fcntl

        with open("/tmp/modelserve-compose-build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.compose("build", timeout=1800)

    def docker(self, *args: str) -> str:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120,
                              check=True).stdout.strip()

    def of_project(self, kind: str) -> list[str]:
        """The stack's containers (model containers included), volumes or networks, by label."""
        ls = ["ps", "-a"] if kind == "container" else [kind, "ls"]
        return self.docker(*ls, "-q", "--filter", f"label=com.docker.compose.project={self.project}").split()

    def health(self, service: str) -> str:
        ids = self.docker("ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                          "--filter", f"label=com.docker.compose.service={service}",
                          "--filter", "label=com.docker.compose.oneoff=False").split()
        if not ids:
            return "missing"
        state = json.loads(self.docker("inspect", "--format", "{{json .State}}", ids[0]))
        return str((state.get("Health") or {}).get("Status") or state.get("Status"))

    def wait_healthy(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {s: self.health(s) for s in ("postgres", "mlflow", "gateway", "supervisor")}
            if set(states.values()) == {"healthy"}:
                return
            if time.monotonic() > deadline:
                logs = self.compose("logs", "--tail=40", timeout=60)
                raise AssertionError(f"the stack is not healthy after {timeout:.0f} s: {states}\n{logs[-6000:]}")
            time.sleep(1)

    def explain(self, system: System) -> str:
        """Why a model container was made: each one's versions and desired-state hash, and the
        reconciler's last lines (a failure message, for a CI log that is all there is)."""
        labels = "{{.ID}} {{.CreatedAt}} {{.Status}} versions={{index .Labels \"modelserve.versions\"}} " \
                 "desired={{index .Labels \"modelserve.desired-hash\"}}"
        out = self.docker("ps", "-a", "--format", labels, "--filter", f"label=com.docker.compose.project={self.project}",
                          "--filter", "label=modelserve.model")
        log = system.data_dir / "logs" / "reconciler.log"
        tail = log.read_text(errors="replace")[-6000:] if log.exists() else "(no reconciler.log)"
        return f"model containers:\n{out}\n--- reconciler.log ---\n{tail}"

    def model_containers(self) -> list[str]:
        return self.docker("ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                           "--filter", "label=modelserve.model").split()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    started = time.monotonic()
    require_engine()
    # Short: the scoring servers' Unix socket paths live below it (108 bytes at most).
    data_dir = Path(tempfile.mkdtemp(prefix="msc-", dir="/tmp"))
    st = Stack(data_dir)
    try:
        st.build()
        print(f"\ncompose: images built in {time.monotonic() - started:.0f} s")
        st.compose("up", "-d")
        st.wait_healthy()
        print(f"compose: stack healthy after {time.monotonic() - started:.0f} s")
        yield st
    finally:
        with contextlib.suppress(AssertionError, subprocess.SubprocessError):
            st.compose("down", "-v", "--timeout", "10", timeout=300)
        shutil.rmtree(data_dir, ignore_errors=True)
        print(f"\ncompose: the module took {time.monotonic() - started:.0f} s")


@pytest.fixture(scope="module")
def csystem(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    password = stack.compose("exec", "-T", "supervisor", "modelserve", "admin-password").strip()
    assert password and password != "password1234"
    with acting_as_admin(password, tmp_path_factory.mktemp("compose-netrc") / "netrc"):
        system = System(url=stack.url, data_dir=stack.data_dir, env=stack.env, admin=("admin", password))
        made = system.wait_for("a token", lambda: system.raw.post(
            f"{system.url}/api/2.0/modelserve/tokens/create", json={"comment": "compose e2e"},
            auth=system.admin, timeout=30).json().get("token_value"), timeout=120)
        system.token = made
        yield system


def seed_curl(url: str, token: str, frame: pd.DataFrame) -> list[Any]:
    """The seed's curl: ``-u token:...`` and the MLflow 1.x ``format=pandas-split`` content type."""
    body = frame.to_dict(orient="split")
    body.pop("index", None)
    out = subprocess.run(["curl", "-s", "-f", "-u", f"token:{token}", "-X", "POST",
                          "-H", "Content-Type: application/json; format=pandas-split",
                          "-d", json.dumps(body), url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"curl {url}: exit {out.returncode} {out.stdout} {out.stderr}"
    return list(json.loads(out.stdout))


def split_score(system: System, url: str, frame: pd.DataFrame) -> list[Any] | None:
    body = frame.to_dict(orient="split")
    body.pop("index", None)
    r = system.raw.post(url, json={"dataframe_split": body}, headers={"Authorization": f"Bearer {system.token}"},
                        timeout=30)
    return list(r.json()["predictions"]) if r.status_code == 200 else None


def register(system: System, iris: pd.DataFrame, label_shift: int = 0) -> str:
    from sklearn.linear_model import LogisticRegression

    x, y = iris.drop(columns=["target"]), (iris["target"] + label_shift) % 3
    mlflow.set_tracking_uri(system.url)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(LogisticRegression(max_iter=500).fit(x, y), name="model",
                                        input_example=x.head(3), registered_model_name=NAME)
    return str(info.registered_model_version)


def uri(system: System, target: str) -> str:
    return f"{system.url}/model/{NAME}/{target}/invocations"


def test_serve_and_score_by_version_stage_and_alias(csystem: System, stack: Stack, iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).sample(6, random_state=7)
    assert register(csystem, iris) == "1"
    assert csystem.api("POST", "enable", registered_model_name=NAME).status_code == 200
    csystem.wait_version(NAME, "1", "VERSION_STATE_READY", timeout=900)
    expected = seed_curl(uri(csystem, "1"), csystem.token, rows)
    assert len(expected) == 6
    assert split_score(csystem, uri(csystem, "1"), rows) == expected

    client = MlflowClient(csystem.url)
    client.transition_model_version_stage(NAME, "1", "Production")
    client.set_registered_model_alias(NAME, "champion", "1")
    for target in ("Production", "@champion"):
        csystem.wait_for(f"{target} routed", lambda t=target: split_score(csystem, uri(csystem, t), rows) == expected,
                         timeout=120)
        assert seed_curl(uri(csystem, target), csystem.token, rows) == expected
    # The model runs in a container of the stack's project, with no network.
    [container] = stack.model_containers()
    assert stack.docker("inspect", "--format", "{{.HostConfig.NetworkMode}}", container) == "none"


def test_a_new_version_deploys_by_itself_and_archive(csystem: System, iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).head(5)
    first = split_score(csystem, uri(csystem, "1"), rows)
    assert register(csystem, iris, label_shift=1) == "2"
    csystem.wait_version(NAME, "2", "VERSION_STATE_READY", timeout=600)
    second = split_score(csystem, uri(csystem, "2"), rows)
    assert second is not None and second != first
    MlflowClient(csystem.url).transition_model_version_stage(NAME, "1", "Archived")
    csystem.wait_for("v1 undeployed", lambda: "1" not in csystem.versions(NAME), timeout=120)
    csystem.wait_for("v1 URI gone", lambda: csystem.raw.post(
        uri(csystem, "1"), json=rows.to_dict(orient="records"),
        headers={"Authorization": f"Bearer {csystem.token}"}, timeout=30).status_code == 404, timeout=60)


CAPTURED = "iris-compose-captured"


def inference_rows(system: System) -> list[dict[str, Any]]:
    r = system.raw.get(f"{system.url}/api/2.0/modelserve/serving-endpoints/{CAPTURED}/inference-table",
                       params={"format": "jsonl"}, headers={"Authorization": f"Bearer {system.token}"}, timeout=120)
    assert r.status_code == 200, r.text[:300]
    # JSON Lines' own rule: one row per "\n" (the export also escapes the U+2028 sent below).
    return [json.loads(line) for line in r.text.split("\n") if line]


def test_an_endpoint_captures_every_request_into_the_stacks_postgres(csystem: System, iris: pd.DataFrame) -> None:
    """The inference table on the stack's own parts: the gateway container's capture line (with
    the answer the model container carried back on it), the supervisor's ingester writing to
    Postgres. The endpoint stays
    for the restart and down/up tests, which check that its rows do too."""
    headers = {"Authorization": f"Bearer {csystem.token}"}
    config = {"served_entities": [{"entity_name": NAME, "entity_version": "2", "workload_size": "Small",
                                   "scale_to_zero_enabled": False}],
              "auto_capture_config": {"enabled": True, "sampling_fraction": 1.0}}
    r = csystem.raw.post(f"{csystem.url}/api/2.0/serving-endpoints", json={"name": CAPTURED, "config": config},
                         headers=headers, timeout=30)
    assert r.status_code == 200, r.text[:300]
    csystem.wait_for(f"{CAPTURED} READY", lambda: csystem.raw.get(
        f"{csystem.url}/api/2.0/serving-endpoints/{CAPTURED}", headers=headers, timeout=30
    ).json()["state"]["ready"] == "READY", timeout=300)
    x = iris.drop(columns=["target"]).head(2)
    sent = {}
    for n in range(12):
        # A client_request_id with a tab, a quote and U+2028 sent raw: the line must carry them.
        body = {"dataframe_split": {"columns": list(x.columns), "data": x.values.tolist()},
                "client_request_id": f"c{n}\t\"\u2028"}
        got = csystem.raw.post(f"{csystem.url}/serving-endpoints/{CAPTURED}/invocations",
                               data=json.dumps(body, ensure_ascii=False).encode(),
                               headers={**headers, "Content-Type": "application/json"}, timeout=60)
        assert got.status_code == 200, got.text[:300]
        sent[body["client_request_id"]] = got.json()
    rows = csystem.wait_for("12 rows", lambda: (found := inference_rows(csystem)) and len(found) >= 12 and found,
                            timeout=120)
    assert len(rows) == 12 and {r["client_request_id"] for r in rows} == set(sent)
    for row in rows:
        assert row["status_code"] == 200 and row["version"] == "2"
        assert json.loads(row["response"]) == sent[row["client_request_id"]]


def test_restarting_the_supervisor_loses_no_request(csystem: System, stack: Stack, iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).head(3).to_dict(orient="records")
    # The container of version 1's time is retired once the gateway no longer routes to it. The
    # restart comes once one container has stayed the only one for a few reconcile ticks (3 s
    # each), so that it does not interrupt a switch still under way (which would rightly go on).
    steady: dict[str, float] = {}

    def one_for_a_while() -> list[str]:
        found = stack.model_containers()
        key = ",".join(found) if len(found) == 1 else ""
        first = steady.setdefault(key, time.monotonic()) if key else 0.0
        if not key:
            steady.clear()
        return found if key and time.monotonic() - first >= 10 else []

    [container] = csystem.wait_for("one model container, steadily", one_for_a_while, timeout=180)
    with Load([uri(csystem, "2")], rows, max_seconds=300,
              headers={"Authorization": f"Bearer {csystem.token}"}) as load:
        csystem.wait_for("load running", lambda: load.ok > 3, timeout=60)
        stack.compose("restart", "supervisor")
        stack.wait_healthy(timeout=300)
        served = load.ok
        csystem.wait_for("load after the restart", lambda: load.ok > served + 3, timeout=60)
    assert load.failures == [], load.failures[:5]
    # Adopted, not replaced.
    assert stack.model_containers() == [container], stack.explain(csystem)


def test_down_and_up_keep_models_tokens_and_scoring(csystem: System, stack: Stack, iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).head(4)
    before = split_score(csystem, uri(csystem, "2"), rows)
    events = csystem.api("GET", "get-event-history", registered_model_name=NAME).json()["events"]
    stack.compose("down", "--timeout", "10")
    assert stack.of_project("container") == []
    stack.compose("up", "-d")
    stack.wait_healthy(timeout=300)
    enabled = {e["registered_model_name"] for e in
               csystem.wait_for("the API", lambda: csystem.api("GET", "list").json()["endpoints"], timeout=120)}
    assert enabled == {NAME}
    after = csystem.api("GET", "get-event-history", registered_model_name=NAME).json()["events"]
    assert after[-len(events):] == events
    csystem.wait_version(NAME, "2", "VERSION_STATE_READY", timeout=300)
    # The inference table's rows live in Postgres too: none lost, none added twice.
    assert len(inference_rows(csystem)) == 12
    # The token made before `down` still scores: tokens live in Postgres, not in a container.
    assert csystem.wait_for("old token scores", lambda: split_score(csystem, uri(csystem, "2"), rows),
                            timeout=300) == before
    assert seed_curl(uri(csystem, "2"), csystem.token, rows) == before


def test_disable_then_down_v_leaves_nothing(csystem: System, stack: Stack) -> None:
    # The endpoint serves the model too: deleted first, so that disabling stops its container.
    assert csystem.raw.delete(f"{csystem.url}/api/2.0/serving-endpoints/{CAPTURED}",
                              headers={"Authorization": f"Bearer {csystem.token}"}, timeout=30).status_code == 200
    assert csystem.api("POST", "disable", registered_model_name=NAME).status_code == 200
    csystem.wait_for("model container removed", lambda: stack.model_containers() == [], timeout=120)
    # Enabled again, so that `down -v` has a model container to remove.
    assert csystem.api("POST", "enable", registered_model_name=NAME).status_code == 200
    csystem.wait_version(NAME, "2", "VERSION_STATE_READY", timeout=300)
    assert len(stack.model_containers()) == 1
    stack.compose("down", "-v", "--timeout", "10")
    assert stack.of_project("container") == []
    assert stack.of_project("volume") == []
    assert stack.of_project("network") == []
