"""The whole system, for real: ``modelserve up --detach`` with a real ``mlflow server``, real Nginx
and real model processes, on free loopback ports and a temporary data dir; ``modelserve down``
at the end. Helpers log and register real scikit-learn models through the gateway.

Authentication is on, as it is by default. The fixture chooses the admin password
(``MODELSERVE_ADMIN_PASSWORD``) and makes every test talk as the admin unless it says otherwise:
``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` for MLflow's client and the CLI, and a netrc file
(``NETRC``) for ``requests``, which uses it for any request to 127.0.0.1 that carries no auth of
its own. Beware: requests lets netrc *replace* an ``Authorization`` header you set by hand; to send
exact headers use ``System.raw`` (a session that ignores netrc). ``System.token`` is an admin
token for clients that need one (the seed's ``score_model``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import environ, free_port

API = "/api/2.0/preview/mlflow/endpoints"
ARTIFACTS = Path(__file__).resolve().parents[2] / "tests-artifacts"


@dataclass
class System:
    url: str
    data_dir: Path
    env: dict[str, str]
    admin: tuple[str, str] = ("admin", "")
    token: str = ""

    @property
    def raw(self) -> requests.Session:
        """A session that sends exactly the headers given (no netrc, no admin credentials)."""
        session = requests.Session()
        session.trust_env = False
        return session

    def api(self, method: str, op: str, **params: Any) -> requests.Response:
        if method == "GET":
            return requests.get(f"{self.url}{API}/{op}", params=params, timeout=30)
        return requests.post(f"{self.url}{API}/{op}", json=params, timeout=30)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "supervisor.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=600, check=check)

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float = 300.0, every: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
            except requests.RequestException as exc:
                last = exc
                last = None
            if last:
                return last
            time.sleep(every)
        logs = ""
        for name in ("reconciler.log", "api.log"):
            p = self.data_dir / "logs" / name
            if p.exists():
                logs += f"\n--- {name} ---\n" + p.read_text(errors="replace")[-4000:]
        raise AssertionError(f"timed out waiting for {what}{logs}")

    def versions(self, model: str) -> dict[str, dict[str, Any]]:
        r = self.api("GET", "list-versions", registered_model_name=model)
        if r.status_code != 200:
            return {}
        return {v["endpoint_version_name"]: v for v in r.json()["endpoint_versions"]}

    def wait_version(self, model: str, version: str, state: str, timeout: float = 400.0) -> dict[str, Any]:
        return self.wait_for(f"{model} v{version} {state}",
                             lambda: (self.versions(model).get(version) or {}).get("state") == state
                             and self.versions(model)[version], timeout)


# One admin password for every system a test session starts, so MLflow's client, the CLI and
# requests (through one netrc) act as the admin of whichever system they talk to.
ADMIN_PASSWORD = "admin-" + secrets.token_urlsafe(12)


@contextlib.contextmanager
def running_system(data: Path, extra_env: dict[str, str] | None = None) -> Iterator[System]:
    """``modelserve up --detach`` on free loopback ports and ``data``, with authentication on and
    the tests acting as its admin; ``modelserve down`` after, and the environment restored."""
    with acting_as_admin(ADMIN_PASSWORD, data / "netrc") as admin_env:
        yield from _running_system(data, admin_env, extra_env)


@contextlib.contextmanager
def acting_as_admin(password: str, netrc: Path, host: str = "127.0.0.1") -> Iterator[dict[str, str]]:
    """MLflow's client, the CLI and requests (through a netrc for ``host``) act as the admin
    with ``password`` until the end of the block; the environment is restored after."""
    netrc.write_text(f"machine {host} login admin password {password}\n")
    netrc.chmod(0o600)
    with environ({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password,
                  "NETRC": str(netrc)}) as admin_env:
        yield admin_env


def _running_system(data: Path, admin_env: dict[str, str], extra_env: dict[str, str] | None) -> Iterator[System]:
    port, api_port, mlflow_port = free_port(), free_port(), free_port()
    # Below Linux's ephemeral ports (32768+): a client's outgoing connection must never hold the
    # port a scoring server is about to bind (the churn suite opens a connection per request).
    # Two test workers of one run (pytest-xdist, gw0/gw1) get ranges of different parity.
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    base = 20000 + ((os.getpid() % 60) * 2 + worker % 2) * 100 + (50 if extra_env else 0)
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update({
        "MODELSERVE_DATA_DIR": str(data),
        "MODELSERVE_PORT": str(port),
        "MODELSERVE_API_PORT": str(api_port),
        "MODELSERVE_MLFLOW_PORT": str(mlflow_port),
        "MODELSERVE_PORT_RANGE_START": str(base),
        "MODELSERVE_PORT_RANGE_END": str(base + 49),
        "MODELSERVE_RECONCILE_INTERVAL": "1",
        # Only entities with scale_to_zero_enabled sleep (tests/e2e/test_endpoints.py): short, so
        # the test waits seconds, not the default half hour.
        "MODELSERVE_SCALE_TO_ZERO_IDLE_SECONDS": "6",
        "MODELSERVE_URL": f"http://127.0.0.1:{port}",
        "MODELSERVE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        **admin_env,
        "PATH": f"{Path(sys.executable).parent}:/usr/sbin:{env.get('PATH', '')}",
    })
    env.update(extra_env or {})
    up = subprocess.run([sys.executable, "-m", "supervisor.cli", "up", "--detach"], env=env, capture_output=True,
                        text=True, timeout=700)
    sys_ = System(url=f"http://127.0.0.1:{port}", data_dir=data, env=env, admin=("admin", ADMIN_PASSWORD))
    try:
        assert up.returncode == 0, f"modelserve up failed:\n{up.stdout}\n{up.stderr}"
        # A just-started MLflow on a busy machine may not answer the first password check in
        # time: a 503 with Retry-After is then a fair answer, and a client retries it.
        deadline = time.monotonic() + 180
        while True:
            made = sys_.raw.post(f"{sys_.url}/api/2.0/modelserve/tokens/create", json={"comment": "tests"},
                                 auth=sys_.admin, timeout=30)
            if made.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert made.status_code == 200, made.text
        sys_.token = made.json()["token_value"]
        yield sys_
    finally:
        subprocess.run([sys.executable, "-m", "supervisor.cli", "down"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("modelserve")) as sys_:
        yield sys_


@pytest.fixture(scope="session")
def iris() -> Any:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    frame.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width", "target"]
    return frame


@pytest.fixture(scope="session")
def register(system: System, iris: Any) -> Callable[..., str]:
    return registrar(system, iris)


def registrar(system: System, iris: Any) -> Callable[..., str]:
    """Log a scikit-learn classifier on iris and register it; returns the new version."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    def _register(name: str, label_shift: int = 0, extra_pip_requirements: list[str] | None = None) -> str:
        # label_shift gives a version whose predictions differ from the first's on every row.
        x, y = iris.drop(columns=["target"]), (iris["target"] + label_shift) % 3
        c = 1.0
        mlflow.set_tracking_uri(system.url)  # several systems may run in one session
        model = LogisticRegression(C=c, max_iter=500).fit(x, y)
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(model, name="model", input_example=x.head(3),
                                            registered_model_name=name,
                                            extra_pip_requirements=extra_pip_requirements)
        return str(info.registered_model_version)

    return _register


BAD_INPUT_MODEL = "bad-input-model"


@pytest.fixture(scope="session")
def bad_input_model(system: System, register: Callable[..., str]) -> str:
    """One served model (version 1) for the bad-input tests (test_api_fuzz, test_gateway_limits):
    one deployment instead of one per module. Nothing in the OpenAPI document names it, so the
    API fuzzer cannot disable it."""
    register(BAD_INPUT_MODEL)
    assert system.api("POST", "enable", registered_model_name=BAD_INPUT_MODEL).status_code == 200
    system.wait_version(BAD_INPUT_MODEL, "1", "VERSION_STATE_READY")
    return BAD_INPUT_MODEL
