"""The main job, end to end: register -> enable -> READY -> score every way -> new version ->
stage move -> archive -> alias -> disable, against the real running system."""

from __future__ import annotations

import io
import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from supervisor.launcher import pid_alive
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e

NAME = "iris-classifier"


def score_model(model_uri: str, databricks_token: str, data: Any) -> Any:
    """The seed document's own Python snippet, unchanged."""
    headers = {
        "Authorization": f"Bearer {databricks_token}",
        "Content-Type": "application/json; format=pandas-records",
    }
    data_json = data if isinstance(data, list) else data.to_dict(orient="records")
    response = requests.request(method="POST", headers=headers, url=model_uri, json=data_json)
    if response.status_code != 200:
        raise Exception(f"Request failed with status {response.status_code}, {response.text}")
    return response.json()


def local_predict(name: str, version: str, frame: pd.DataFrame) -> list[Any]:
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    return [int(x) for x in model.predict(frame)]


def host_pid(system: System, name: str) -> list[int]:
    """The box of ``name`` and every process in it (its host and scoring servers), as seen here."""
    from supervisor.isolation import pidns

    pids = []
    for host_json in (system.data_dir / "hosts").glob("*/host.json"):
        if json.loads(host_json.read_text())["model"] != name:
            continue
        box = int(json.loads(host_json.read_text())["pid"])
        pids += [box, *pidns.descendants(box)]
    return pids


def open_inference_protocol(system: System, rows: pd.DataFrame, expected: list[int]) -> None:
    """Version 2 is served (and Production and @champion lead to it), version 1 is archived."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=system.url.removeprefix("http://"), network_timeout=60)
    auth = {"Authorization": f"Bearer {system.token}"}
    assert client.is_server_live() and client.is_server_ready()
    inputs = []
    for col in rows.columns:  # MLServer's pd content type: one tensor per column
        tensor = triton.InferInput(col, [len(rows)], "FP64")
        tensor.set_data_from_numpy(rows[col].to_numpy(dtype="float64"), binary_data=False)
        inputs.append(tensor)
    for segment in ("2", "Production", "@champion"):
        assert client.is_model_ready(NAME, segment, headers=auth)
        result = client.infer(NAME, inputs, model_version=segment, headers=auth, parameters={"content_type": "pd"})
        assert result.as_numpy("predictions").tolist() == expected
        assert result.get_response()["model_name"] == NAME and result.get_response()["model_version"] == "2"
    meta = client.get_model_metadata(NAME, "Production", headers=auth)
    assert meta["versions"] == ["2"] and [t["name"] for t in meta["inputs"]] == list(rows.columns)
    # One tensor of rows answers the same as /invocations' dataframe_split.
    table = triton.InferInput("rows", list(rows.shape), "FP64")
    table.set_data_from_numpy(rows.to_numpy(dtype="float64"), binary_data=False)
    assert client.infer(NAME, [table], model_version="2", headers=auth).as_numpy("predictions").tolist() == expected
    # The same access check, and the protocol's error form for every refusal.
    for version, headers, status in (("2", None, "401"), ("1", auth, "404"), ("9", auth, "404")):
        with pytest.raises(InferenceServerException) as refused:
            client.infer(NAME, inputs, model_version=version, headers=headers)
        assert refused.value.status() == status and refused.value.message()
    bad = triton.InferInput("sepal_length", [1, 2], "FP64")
    bad.set_data_from_numpy(np.zeros((1, 2)), binary_data=False)
    with pytest.raises(InferenceServerException) as refused:
        client.infer(NAME, [bad], model_version="2", headers=auth)
    assert refused.value.status() == "400" and "[rows, 1]" in str(refused.value.message())
    client.close()


def test_serve_a_registered_model_end_to_end(system: System, register: Any, iris: pd.DataFrame) -> None:
    client = MlflowClient(system.url)
    features = iris.drop(columns=["target"])
    rows = features.sample(12, random_state=3)

    # Version 1, then enable serving.
    assert register(NAME) == "1"
    assert system.api("POST", "enable", registered_model_name=NAME).status_code == 200
    system.wait_version(NAME, "1", "VERSION_STATE_READY")
    status = system.wait_for("endpoint READY", lambda: system.api(
        "GET", "get-status", registered_model_name=NAME).json()["endpoint_status"]["state"] == "ENDPOINT_STATE_READY")
    assert status
    expected_v1 = local_predict(NAME, "1", rows)

    v1 = f"{system.url}/model/{NAME}/1/invocations"
    # The seed's request: format=pandas-records, a list of records -> a bare list, as MLflow 1.x answered.
    assert score_model(v1, system.token, rows) == expected_v1
    assert score_model(v1, system.token, rows.to_dict(orient="records")) == expected_v1

    # The MLflow 2.x/3.x forms.
    split = rows.to_dict(orient="split")
    split.pop("index", None)
    for body in ({"dataframe_split": split}, {"dataframe_records": rows.to_dict(orient="records")},
                 {"instances": rows.to_dict(orient="records")}):
        r = requests.post(v1, json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json() == {"predictions": expected_v1}
    buf = io.StringIO()
    rows.to_csv(buf, index=False)
    r = requests.post(v1, data=buf.getvalue(), headers={"Content-Type": "text/csv"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": expected_v1}

    # Stage URI.
    client.transition_model_version_stage(NAME, "1", "Production")
    prod = f"{system.url}/model/{NAME}/Production/invocations"
    system.wait_for("Production route", lambda: requests.post(prod, json=rows.to_dict(orient="records"),
                                                              timeout=10).status_code == 200, timeout=120)
    assert score_model(prod, system.token, rows) == expected_v1

    # Version 2 is deployed without any call, reusing version 1's environment.
    assert register(NAME, label_shift=1) == "2"
    system.wait_version(NAME, "2", "VERSION_STATE_READY")
    logs = system.api("POST", "get-version-logs", registered_model_name=NAME, endpoint_version_name="2").json()
    assert "reusing" in logs["logs"].lower(), logs["logs"][:2000]
    expected_v2 = local_predict(NAME, "2", rows)
    assert expected_v2 != expected_v1
    assert score_model(f"{system.url}/model/{NAME}/2/invocations", system.token, rows) == expected_v2

    # Move Production to version 2; version 1's own URI keeps answering.
    client.transition_model_version_stage(NAME, "2", "Production")
    system.wait_for("Production -> v2", lambda: score_model(prod, system.token, rows) == expected_v2, timeout=120)
    assert score_model(v1, system.token, rows) == expected_v1
    aliases = system.api("GET", "list-version-aliases", registered_model_name=NAME).json()["aliases"]
    assert {"alias": "Production", "endpoint_version_name": "2"} in aliases

    # Archive version 1: its URI answers 404 and it is no longer listed.
    client.transition_model_version_stage(NAME, "1", "Archived")
    system.wait_for("v1 removed", lambda: requests.post(v1, json=[{}], timeout=10).status_code == 404,
                    timeout=120)
    r = requests.post(v1, json=rows.to_dict(orient="records"), timeout=30)
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "1" not in system.versions(NAME)

    # An alias route.
    client.set_registered_model_alias(NAME, "champion", "2")
    alias_uri = f"{system.url}/model/{NAME}/@champion/invocations"
    system.wait_for("alias route", lambda: requests.post(alias_uri, json=rows.to_dict(orient="records"),
                                                         timeout=10).status_code == 200, timeout=120)
    assert score_model(alias_uri, system.token, rows) == expected_v2

    # The Open Inference Protocol (V2) on the same routes, with a real V2 client.
    open_inference_protocol(system, rows, expected_v2)

    # Events tell the story.
    events = system.api("GET", "get-event-history", registered_model_name=NAME).json()["events"]
    types = {e["event_type"] for e in events}
    assert {"MODEL_UPDATE", "VERSION_UPDATE", "ENDPOINT_UPDATED"} <= types
    assert events == sorted(events, key=lambda e: -e["timestamp"])

    # The CLI over the same API.
    out = system.cli("status", NAME).stdout
    assert "ENDPOINT_STATE_READY" in out and "version 2" in out
    assert "Serving enabled" in system.cli("events", NAME).stdout

    # Disable: every route goes, the processes exit.
    pids = host_pid(system, NAME)
    assert len(pids) >= 6  # bubblewrap, its init, the keeper, the host, version 2's server and its workers
    assert pids and all(pid_alive(p) for p in pids)
    assert system.cli("disable", NAME).returncode == 0
    for uri in (prod, alias_uri, f"{system.url}/model/{NAME}/2/invocations"):
        system.wait_for(f"{uri} gone", lambda u=uri: requests.post(u, json=[{}], timeout=10).status_code == 404,
                        timeout=120)
    system.wait_for("host exited", lambda: not any(pid_alive(p) for p in pids), timeout=120)
    r = system.api("GET", "get-status", registered_model_name=NAME)
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
