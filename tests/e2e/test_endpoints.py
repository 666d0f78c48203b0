"""Serving endpoints end to end, through the two real clients a team leaving Databricks has:
``databricks-sdk``'s ``WorkspaceClient().serving_endpoints`` and MLflow's
``get_deploy_client("databricks")``, pointed at the gateway with ``DATABRICKS_HOST`` and a
modelserve token, unchanged; plus curl and plain HTTP for what neither client sends.

One endpoint on the session's system lives through the module, in order: created (SDK waiter),
scored every way, updated to 80/20 under a steady load, updated to an unbuildable version
(UPDATE_FAILED, the old config serving on), queried by a user who needs CAN_QUERY, fed bad input,
deleted. Only endpoints serve the model until the last test, which turns legacy serving on to show
that a deleted endpoint's versions keep running while legacy serving still uses them.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import cloudpickle
import mlflow
import pandas as pd
import pytest
import requests
import yaml
from mlflow import MlflowClient

from supervisor.launcher import pid_alive
from supervisor.runtime import make_runtime
from supervisor.runtime.base import VersionProcess
from supervisor.settings import Settings
from tests.e2e.conftest import API, System
from tests.e2e.test_access import _grant, _mlflow, _new_token
from tests.e2e.test_serving import host_pid
from tests.support import environ

pytestmark = pytest.mark.e2e

MODEL = "ep-iris"
EP = "ep-e2e"
V1, V2, V3 = "ep-iris-1", "ep-iris-2", "ep-iris-3"  # the entities' default names
ZERO = "ep-zero"  # an endpoint of its own, whose only entity scales to zero
QUERIER = ("ep-querier", "querier-pw-5t6y7")
SPLIT_REQUESTS = 2000
WAIT = timedelta(minutes=8)


@dataclass
class Env:
    system: System
    rows: list[dict[str, float]]
    expected: dict[str, list[int]]  # entity name -> the predictions its version gives for ``rows``
    versions: Versions
    workspace: Any = None
    deploy: Any = None
    endpoint_id: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def invocations(self) -> str:
        return f"{self.system.url}/serving-endpoints/{EP}/invocations"

    def score(self, token: str, url: str | None = None, body: Any = None) -> requests.Response:
        return self.system.raw.post(url or self.invocations, json=body or {"dataframe_records": self.rows},
                                    headers={"Authorization": f"Bearer {token}"}, timeout=30)


class Versions:
    """New versions of ``MODEL`` made from version 1's files (a refitted model, or one more
    requirement) and registered from a run of their own: the same environment as version 1 unless
    a requirement is added, and none of ``log_model``'s requirement inference, which takes a minute
    on a loaded machine."""

    def __init__(self, system: System, folder: Path) -> None:
        self.client = MlflowClient(system.url)
        self.folder = folder
        self.v1 = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/1", dst_path=str(folder / "1"),
                                                          tracking_uri=system.url))

    def add(self, model: Any = None, requirement: str | None = None) -> str:
        files = self.folder / f"new-{len(list(self.folder.iterdir()))}"
        shutil.copytree(self.v1, files)
        if model is not None:
            # Saved the way version 1's MLmodel says its model file is (skops by default in MLflow 3).
            flavor = yaml.safe_load((files / "MLmodel").read_text())["flavors"]["sklearn"]
            target = files / flavor["pickled_model"]
            if flavor.get("serialization_format") == "skops":
                import skops.io

                skops.io.dump(model, target)
            else:
                with target.open("wb") as f:
                    cloudpickle.dump(model, f)
        if requirement is not None:
            with (files / "requirements.txt").open("a") as f:
                f.write(f"\n{requirement}\n")
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(files), "model")
        return str(self.client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id).version)


@pytest.fixture(scope="module")
def env(system: System, register: Any, iris: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    from sklearn.linear_model import LogisticRegression

    started = time.monotonic()
    assert register(MODEL) == "1"
    folder = tmp_path_factory.mktemp("ep-versions")
    versions = Versions(system, folder)
    x = iris.drop(columns=["target"])
    # Version 2 answers differently from version 1 on every row, so an answer shows who gave it.
    shifted = LogisticRegression(max_iter=500).fit(x, (iris["target"] + 1) % 3)
    assert versions.add(model=shifted) == "2"
    rows = x.sample(6, random_state=5).to_dict(orient="records")
    v1 = mlflow.pyfunc.load_model(str(versions.v1))
    expected = {V1: [int(p) for p in v1.predict(pd.DataFrame(rows))],
                V2: [int(p) for p in shifted.predict(pd.DataFrame(rows))]}
    assert expected[V1] != expected[V2]
    # Both clients read these; an empty netrc makes sure every call carries the token, not the
    # admin's password that the session's netrc would otherwise put in its place.
    empty = folder / "netrc"
    empty.write_text("")
    with environ({"DATABRICKS_HOST": system.url, "DATABRICKS_TOKEN": system.token, "NETRC": str(empty)}):
        from databricks.sdk import WorkspaceClient
        from mlflow.deployments import get_deploy_client

        e = Env(system, rows, expected, versions, started=started)
        e.workspace, e.deploy = WorkspaceClient(), get_deploy_client("databricks")
        yield e
        print(f"\nendpoints e2e module: {time.monotonic() - started:.0f} s")


def test_create_with_the_sdk_waiter_and_score_through_both_clients_and_curl(env: Env) -> None:
    from databricks.sdk.service.serving import (
        DataframeSplitInput,
        EndpointCoreConfigInput,
        EndpointStateConfigUpdate,
        EndpointStateReady,
        ServedEntityInput,
    )

    w = env.workspace
    ep = w.serving_endpoints.create_and_wait(
        name=EP, timeout=WAIT,
        config=EndpointCoreConfigInput(name=EP, served_entities=[
            ServedEntityInput(entity_name=MODEL, entity_version="1", workload_size="Small",
                              scale_to_zero_enabled=False)]))
    env.endpoint_id = ep.id
    assert ep.state.config_update == EndpointStateConfigUpdate.NOT_UPDATING
    assert ep.state.ready == EndpointStateReady.READY
    assert ep.config.config_version == 1 and ep.pending_config is None
    assert [e.name for e in ep.config.served_entities] == [V1]

    # The SDK: split frame in, predictions and the entity's name out.
    frame = pd.DataFrame(env.rows)
    split = DataframeSplitInput(columns=list(frame.columns), data=frame.values.tolist())
    answer = w.serving_endpoints.query(name=EP, dataframe_split=split)
    assert answer.predictions == env.expected[V1] and answer.served_model_name == V1
    # MLflow's deployments client: the body verbatim, an object back.
    assert env.deploy.predict(endpoint=EP, inputs={"dataframe_records": env.rows})["predictions"] == env.expected[V1]
    assert env.deploy.get_endpoint(EP)["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert [x["name"] for x in env.deploy.list_endpoints()] == [EP]  # GET .../serving-endpoints/ (slash)
    # curl, as a user of the REST API would.
    out = subprocess.run(["curl", "-sS", "-D", "-", "-H", f"Authorization: Bearer {env.system.token}",
                          "-H", "Content-Type: application/json", "--data",
                          json.dumps({"dataframe_records": env.rows}), env.invocations],
                         capture_output=True, timeout=60, check=True).stdout.decode()
    head, _, text = out.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200") and f"served-model-name: {V1}" in head
    assert json.loads(text) == {"predictions": env.expected[V1]}
    # The entity's scoring server log, as the SDK reads it.
    assert "modelserve scoring server: model loaded" in w.serving_endpoints.logs(EP, V1).logs


class SplitLoad:
    """Two threads scoring the endpoint, recording each answer's status, entity and whether its
    predictions are that entity's; bounded by ``limit`` answers. A new connection per request, as
    tests/e2e/load.py does: a kept-alive one can meet HTTP/1.1's race with a reload (docs/DESIGN.md,
    "Reloads and keep-alive clients"), which is not what this test is about."""

    def __init__(self, env: Env, limit: int = 200_000) -> None:
        self.env, self.limit = env, limit
        self.answers: list[tuple[int, str, bool]] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.env.system.token}", "Connection": "close"}
        body = {"dataframe_records": self.env.rows}
        while not self._stop.is_set() and len(self.answers) < self.limit:
            try:
                with self.env.system.raw as session:
                    r = session.post(self.env.invocations, json=body, headers=headers, timeout=30)
                entity = r.headers.get("served-model-name", "")
                right = r.status_code == 200 and r.json().get("predictions") == self.env.expected.get(entity)
            except (requests.RequestException, ValueError) as exc:  # no answer, or not JSON
                with self._lock:
                    self.failures.append(repr(exc))
                continue
            with self._lock:
                self.answers.append((r.status_code, entity, right))
                if not right:
                    self.failures.append(f"{r.status_code} {entity!r} {r.text[:200]}")

    def count(self) -> int:
        return len(self.answers)

    def __enter__(self) -> SplitLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def test_update_to_80_20_under_steady_load_switches_at_once_without_a_failed_request(env: Env) -> None:
    from databricks.sdk.errors import ResourceConflict
    from databricks.sdk.service.serving import ServedEntityInput

    config = {"served_entities": [{"entity_name": MODEL, "entity_version": "1"},
                                  {"entity_name": MODEL, "entity_version": "2"}],
              "traffic_config": {"routes": [{"served_model_name": V1, "traffic_percentage": 80},
                                            {"served_model_name": V2, "traffic_percentage": 20}]}}
    with SplitLoad(env) as load:
        env.system.wait_for("load running", lambda: load.count() >= 50, timeout=60, every=0.1)
        updated = env.deploy.update_endpoint_config(endpoint=EP, config=config)
        accepted = load.count()
        assert updated["state"]["config_update"] == "IN_PROGRESS" and updated["pending_config"]["config_version"] == 2
        assert updated["config"]["config_version"] == 1  # the old config serves meanwhile
        # A second update while this one rolls out: 409 RESOURCE_CONFLICT, to both clients.
        with pytest.raises(ResourceConflict):
            env.workspace.serving_endpoints.update_config(
                name=EP, served_entities=[ServedEntityInput(entity_name=MODEL, entity_version="2")])
        with pytest.raises(requests.HTTPError, match="409"):
            env.deploy.update_endpoint_config(endpoint=EP, config=config)
        done = env.workspace.serving_endpoints.wait_get_serving_endpoint_not_updating(EP, timeout=WAIT)
        switched = load.count()
        assert done.config.config_version == 2 and done.state.ready.value == "READY"
        env.system.wait_for(f"{SPLIT_REQUESTS} answers after the switch",
                            lambda: load.count() >= switched + SPLIT_REQUESTS, timeout=240, every=0.2)
    assert load.failures == [], load.failures[:5]
    before = Counter(entity for _, entity, _ in load.answers[:accepted])
    after = Counter(entity for _, entity, _ in load.answers[switched:])
    n = sum(after.values())
    # Until the update only the old config answered; once the waiter saw it done, the new one
    # answered every request, its split within 4.5 sigma of 80/20.
    assert set(before) == {V1}, before
    share, sigma = after[V2] / n, math.sqrt(0.2 * 0.8 / n)
    print(f"\nsplit: {n} answers after the switch, {after[V2]} from {V2} ({share:.3f}); "
          f"{switched} before it, 0 failed")
    assert set(after) == {V1, V2} and abs(share - 0.2) < 4.5 * sigma, after
    # Each entity is also reachable directly, outside the split.
    direct = env.score(env.system.token, f"{env.system.url}/serving-endpoints/{EP}/served-models/{V2}/invocations")
    assert direct.status_code == 200 and direct.headers["served-model-name"] == V2
    assert direct.json()["predictions"] == env.expected[V2]
    # The SDK's metrics export: the requests counted per entity (the collector reads the gateway's
    # log every few seconds).
    w = env.workspace
    metrics = env.system.wait_for("endpoint metrics", lambda: (
        text := w.serving_endpoints.export_metrics(EP).contents.read().decode()) and
        f'route="serving-endpoints/{EP}/{V2}"' in text and text, timeout=60)
    assert f'model="{MODEL}",version="1",route="serving-endpoints/{EP}/{V1}",code="200"' in metrics
    doc = json.loads(w.serving_endpoints.get_open_api(EP).contents.read())
    assert list(doc["paths"]) == [f"/serving-endpoints/{EP}/invocations"]


def test_an_unbuildable_version_ends_update_failed_and_the_old_config_serves_on(env: Env) -> None:
    from databricks.sdk.errors import OperationFailed
    from databricks.sdk.service.serving import ServedEntityInput

    assert env.versions.add(requirement="modelserve-no-such-package-xyz==0.0.1") == "3"
    w = env.workspace
    with pytest.raises(OperationFailed, match="UPDATE_FAILED"):
        w.serving_endpoints.update_config_and_wait(
            name=EP, timeout=WAIT, served_entities=[ServedEntityInput(entity_name=MODEL, entity_version="3")])
    ep = w.serving_endpoints.get(EP)
    assert ep.state.config_update.value == "UPDATE_FAILED" and ep.state.ready.value == "READY"
    assert ep.config.config_version == 2 and ep.pending_config is None
    assert "modelserve-no-such-package-xyz" in w.serving_endpoints.build_logs(EP, V3).logs
    r = env.score(env.system.token)
    assert r.status_code == 200 and r.headers["served-model-name"] in (V1, V2)


def test_scoring_needs_can_query_on_the_endpoint_not_read_on_the_model(env: Env) -> None:
    from databricks.sdk.service.serving import (
        ServingEndpointAccessControlRequest,
        ServingEndpointPermissionLevel,
    )

    system = env.system
    _mlflow(system, "POST", "/api/2.0/mlflow/users/create", username=QUERIER[0], password=QUERIER[1])
    _grant(system, QUERIER[0], MODEL, "DENY")  # the model itself is closed to them
    token = _new_token(system, QUERIER)
    denied = env.score(token)
    assert denied.status_code == 403 and denied.json()["error_code"] == "PERMISSION_DENIED"
    env.workspace.serving_endpoints.update_permissions(
        serving_endpoint_id=env.endpoint_id, access_control_list=[ServingEndpointAccessControlRequest(
            user_name=QUERIER[0], permission_level=ServingEndpointPermissionLevel.CAN_QUERY)])
    # The gateway caches access decisions briefly (MODELSERVE_AUTH_CACHE_SECONDS).
    ok = system.wait_for("CAN_QUERY in effect", lambda: (r := env.score(token)).status_code == 200 and r, timeout=60)
    assert ok.json()["predictions"] == env.expected[ok.headers["served-model-name"]]
    # CAN_QUERY reads the endpoint too, but does not manage it.
    mine = {"Authorization": f"Bearer {token}"}
    assert system.raw.get(f"{system.url}/api/2.0/serving-endpoints/{EP}", headers=mine,
                          timeout=30).json()["permission_level"] == "CAN_QUERY"
    assert system.raw.delete(f"{system.url}/api/2.0/serving-endpoints/{EP}", headers=mine,
                             timeout=30).status_code == 403


def test_a_user_over_the_rate_limit_gets_429s_another_does_not_and_the_clients_retry_through(env: Env) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.serving import RateLimit, RateLimitKey, RateLimitRenewalPeriod

    system = env.system
    token = _new_token(system, QUERIER)
    put = env.workspace.serving_endpoints.put(EP, rate_limits=[
        RateLimit(calls=30, key=RateLimitKey.USER, renewal_period=RateLimitRenewalPeriod.MINUTE)])
    assert put.rate_limits is not None and put.rate_limits[0].calls == 30

    def refused() -> list[requests.Response]:
        # Until the reconciler's next tick renders the limit, every request passes; after it, the
        # querier's bucket of 30 is empty within 31 requests. (A list: a 429 Response is falsy.)
        return [r for r in (env.score(token) for _ in range(40)) if r.status_code == 429][:1]

    over = system.wait_for("rate limit in effect", refused, timeout=120, every=0.2)[0]
    assert over.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED" and over.headers["Retry-After"] == "2"
    assert over.headers["Content-Type"].startswith("application/json")
    # Keyed by the principal, not the address: the admin, from the same address in the same
    # second, has a bucket of their own.
    admin = env.score(system.token)
    assert admin.status_code == 200 and admin.json()["predictions"] == env.expected[admin.headers["served-model-name"]]
    assert env.workspace.serving_endpoints.get(EP).ai_gateway.rate_limits[0].key.value == "user"
    # The SDK, as the querier, waits out the 429s by their Retry-After and gets its answer.
    assert any(env.score(token).status_code == 429 for _ in range(40))  # the bucket refills by one per 2 s
    answer = WorkspaceClient(host=system.url, token=token).serving_endpoints.query(EP, dataframe_records=env.rows)
    assert answer.predictions is not None and len(answer.predictions) == len(env.rows)
    # The window refills: after Retry-After, the querier scores again.
    time.sleep(int(over.headers["Retry-After"]) + 0.5)
    assert env.score(token).status_code == 200
    # MLflow's client sends a config of rate_limits alone to PUT .../rate-limits: [] lifts them.
    assert env.deploy.update_endpoint(EP, {"rate_limits": []}) == {"rate_limits": []}
    system.wait_for("rate limit lifted", lambda: all(env.score(token).status_code == 200 for _ in range(40)),
                    timeout=120, every=0.2)


def test_bad_input_gets_the_reference_error_codes_and_changes_nothing(env: Env) -> None:
    from databricks.sdk.errors import NotFound

    system = env.system
    admin = {"Authorization": f"Bearer {system.token}"}
    querier = {"Authorization": f"Bearer {_new_token(system, QUERIER)}"}
    base = f"{system.url}/api/2.0/serving-endpoints"
    before = system.raw.get(f"{base}/{EP}", headers=admin, timeout=30).json()

    def entity(version: str, name: str | None = None) -> dict[str, str]:
        return {"entity_name": MODEL, "entity_version": version, **({"name": name} if name else {})}

    cases: list[tuple[str, str, Any, dict[str, str], int, str]] = [
        ("GET", f"{base}/no-such-endpoint", None, admin, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("GET", f"{base}/{EP}/served-models/no-such-entity/build-logs", None, admin, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("POST", f"{system.url}/serving-endpoints/no-such-endpoint/invocations", {"dataframe_records": env.rows},
         admin, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("POST", f"{system.url}/serving-endpoints/{EP}/served-models/nobody/invocations",
         {"dataframe_records": env.rows}, admin, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("POST", base, {"name": "x" * 64, "config": {"served_entities": [entity("1")]}}, admin, 400,
         "INVALID_PARAMETER_VALUE"),
        ("POST", base, {"name": "bad.name", "config": {"served_entities": [entity("1")]}}, admin, 400,
         "INVALID_PARAMETER_VALUE"),
        ("PUT", f"{base}/{EP}/config", {"served_entities": [entity("1"), entity("2")], "traffic_config": {"routes": [
            {"served_model_name": V1, "traffic_percentage": 70}, {"served_model_name": V2, "traffic_percentage": 20}]}},
         admin, 400, "INVALID_PARAMETER_VALUE"),
        ("PUT", f"{base}/{EP}/config", {"served_entities": [entity("1", f"e{i}") for i in range(16)]}, admin, 400,
         "INVALID_PARAMETER_VALUE"),
        # A model the caller may not read is, to them, one that does not exist.
        ("POST", base, {"name": "ep-sneaky", "config": {"served_entities": [entity("1")]}}, querier, 404,
         "RESOURCE_DOES_NOT_EXIST"),
        ("POST", base, {"name": "ep-sneaky", "config": {"served_entities": [
            {"entity_name": "ep-never-registered", "entity_version": "1"}]}}, querier, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("PUT", f"{base}/{EP}/rate-limits", {"rate_limits": [{"calls": 0, "key": "user"}]}, admin, 400,
         "INVALID_PARAMETER_VALUE"),
        ("PUT", f"{base}/{EP}/rate-limits", {"rate_limits": [{"calls": -5}]}, admin, 400, "INVALID_PARAMETER_VALUE"),
        ("PUT", f"{base}/{EP}/rate-limits", {"rate_limits": [{"calls": 5, "per": "second"}]}, admin, 400,
         "INVALID_PARAMETER_VALUE"),
        ("PUT", f"{base}/{EP}/ai-gateway", {"rate_limits": [{"tokens": 100, "key": "user"}]}, admin, 400,
         "INVALID_PARAMETER_VALUE"),
        ("PUT", f"{base}/{EP}/rate-limits", {"rate_limits": [{"calls": 5}]}, querier, 403, "PERMISSION_DENIED"),
    ]
    for method, url, sent, headers, status, code in cases:
        r = system.raw.request(method, url, json=sent, headers=headers, timeout=30)
        assert r.status_code == status and r.json()["error_code"] == code, (method, url, r.status_code, r.text[:300])
        assert r.headers["Content-Type"].startswith("application/json")
    malformed = system.raw.post(base, data=b'{"name": "ep-x", ', timeout=30,
                                headers={**admin, "Content-Type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["error_code"] == "MALFORMED_REQUEST"
    with pytest.raises(NotFound):
        env.workspace.serving_endpoints.get("no-such-endpoint")
    # The clients' host-metadata probe comes without credentials, and is answered all the same.
    probe = system.raw.get(f"{system.url}/.well-known/databricks-config", timeout=30)
    assert probe.status_code == 200 and probe.json()["workspace_id"].isdigit()
    after = system.raw.get(f"{base}/{EP}", headers=admin, timeout=30).json()
    assert (after["config"], after["state"], after["last_updated_timestamp"]) == (
        before["config"], before["state"], before["last_updated_timestamp"])
    assert "ai_gateway" not in after  # no rate limit was set by any of them
    assert [e["name"] for e in env.deploy.list_endpoints()] == [EP]


def _server(system: System, version: str) -> VersionProcess | None:
    """The version's scoring server as the process runtime records it (None: not wanted)."""
    state = make_runtime(Settings(data_dir=system.data_dir)).host_state(MODEL)
    return state.versions.get(version) if state is not None else None


def _wakings(system: System, version: str) -> int:
    events = system.raw.get(f"{system.url}{API}/get-event-history", params={"registered_model_name": MODEL},
                            auth=system.admin, timeout=30).json()["events"]
    return sum(e["message"] == f"Version {version} is waking from scale to zero" for e in events)


def test_an_idle_scale_to_zero_entity_stops_and_each_clients_retry_wakes_it_once(env: Env) -> None:
    from databricks.sdk import WorkspaceClient

    system = env.system
    version = env.versions.add()  # version 1's files: its environment is built already (warm)
    env.deploy.create_endpoint(ZERO, {"served_entities": [
        {"entity_name": MODEL, "entity_version": version, "scale_to_zero_enabled": True}]})
    env.workspace.serving_endpoints.wait_get_serving_endpoint_not_updating(ZERO, timeout=WAIT)

    def asleep() -> bool:
        got = env.workspace.serving_endpoints.get(ZERO)
        state = got.config.served_entities[0].state
        return got.state.ready.value == "READY" and (state.deployment_state_message or "").startswith(
            "Scaled to zero")

    # MODELSERVE_SCALE_TO_ZERO_IDLE_SECONDS is 6 s in the tests' systems.
    system.wait_for("scaled to zero", asleep, timeout=180, every=1)
    # Stopped at the same tick, after its route answers 503; its environment and files are kept.
    system.wait_for("scoring server stopped", lambda: _server(system, version) is None, timeout=60)
    wakings = _wakings(system, version)
    answers: dict[str, list[Any]] = {"databricks-sdk": [], "mlflow": []}
    started = time.monotonic()

    def query(client: str) -> None:
        if client == "mlflow":
            answer = dict(env.deploy.predict(endpoint=ZERO, inputs={"dataframe_records": env.rows}))
        else:
            answer = WorkspaceClient().serving_endpoints.query(ZERO, dataframe_records=env.rows).as_dict()
        answers[client].append((time.monotonic() - started, answer))

    # First requests together, through both clients: each waits out the 503s by its own retry.
    threads = [threading.Thread(target=query, args=(c,)) for c in ("databricks-sdk",) * 3 + ("mlflow",)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT.total_seconds())
    for client, got in answers.items():
        assert got and all(a["predictions"] == env.expected[V1] for _, a in got), client  # version 1's model
        print(f"\nscale to zero: first request to first 200 with a warm environment, {client} client's own retry "
              f"({len(threads)} requests at once): {min(t for t, _ in got):.1f} s")
    assert sum(len(got) for got in answers.values()) == len(threads)
    # However many asked at once, the entity was woken once and one server started.
    assert _wakings(system, version) == wakings + 1
    server = _server(system, version)
    assert server is not None and server.running and server.restarts == 0
    assert env.deploy.delete_endpoint(ZERO) == {}
    # Its version goes from the registry too, so the next test's legacy serving does not start it.
    env.versions.client.delete_model_version(MODEL, version)
    system.wait_for("version removed", lambda: _server(system, version) is None, timeout=120)


def test_delete_stops_what_only_the_endpoint_served(env: Env) -> None:
    system = env.system
    # Legacy serving on as well: the versions both use run once and stay after the delete.
    enabled = system.raw.post(f"{system.url}{API}/enable", json={"registered_model_name": MODEL},
                              auth=system.admin, timeout=30)
    assert enabled.status_code == 200
    legacy_v2 = f"{system.url}/model/{MODEL}/2/invocations"
    system.wait_for("legacy route", lambda: env.score(system.token, legacy_v2).status_code == 200, timeout=120)
    pids = host_pid(system, MODEL)
    assert pids and all(pid_alive(p) for p in pids)
    assert env.deploy.delete_endpoint(EP) == {}
    system.wait_for("endpoint gone", lambda: env.score(system.token).status_code == 404, timeout=60)
    with pytest.raises(requests.HTTPError, match="RESOURCE_DOES_NOT_EXIST"):
        env.deploy.get_endpoint(EP)
    assert env.deploy.list_endpoints() == []
    assert env.score(system.token, legacy_v2).json()["predictions"] == env.expected[V2]
    assert all(pid_alive(p) for p in pids), "a version legacy serving uses was stopped with the endpoint"
    # Legacy serving off too: now nothing wants the model, and its processes go.
    disabled = system.raw.post(f"{system.url}{API}/disable", json={"registered_model_name": MODEL},
                               auth=system.admin, timeout=30)
    assert disabled.status_code == 200
    system.wait_for("model host exited", lambda: not any(pid_alive(p) for p in pids), timeout=120)
