"""get-box and update-box: READ shows a box, MANAGE changes it, a bad change changes nothing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from supervisor.isolation import boxes
from supervisor.store import Store
from tests.unit.api.conftest import access_app, basic

BOXES = "/api/2.0/modelserve/served-models"
READER, BOSS = basic("reader", "readerpw"), basic("boss", "bosspw")


@pytest.fixture()
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FlaskClient, Store]:
    monkeypatch.setattr(boxes, "running_as_root", lambda: False)
    app, store = access_app(tmp_path, ("iris", "other"), {("reader", "iris"): "READ", ("boss", "iris"): "MANAGE"})
    return app.test_client(), store


def update(client: FlaskClient, headers: dict[str, str], **body: Any) -> Any:
    return client.post(f"{BOXES}/update-box", json={"registered_model_name": "iris", **body}, headers=headers)


def error(resp: Any, status: int, code: str) -> str:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.get_json()["error_code"] == code
    return str(resp.get_json()["message"])


def test_a_reader_sees_the_default_box(api: Any) -> None:
    client, _ = api
    body = client.get(f"{BOXES}/get-box?registered_model_name=iris", headers=READER).get_json()
    assert body == {"registered_model_name": "iris", "box": {
        "network_access": False, "memory_mb": 2048, "cpus": 2.0, "max_processes": 512, "tmp_mb": 256,
        "replicas": 1, "identity": "user_namespace", "uid": None,
        "using_defaults": ["network_access", "memory_mb", "cpus", "max_processes", "replicas"]}}


def test_a_manager_changes_it_and_an_event_says_who(api: Any) -> None:
    client, store = api
    resp = update(client, BOSS, network_access=True, memory_mb=4096, cpus=0.5)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    box = resp.get_json()["box"]
    assert (box["network_access"], box["memory_mb"], box["cpus"], box["max_processes"]) == (True, 4096, 0.5, 512)
    assert box["using_defaults"] == ["max_processes", "replicas"] and box["updated_by"] == "boss"
    assert store.events("iris")[0].message == "Box changed by boss: network on, memory 4096 MiB, CPUs 0.5"
    # absent: unchanged; null: the default again
    box = update(client, BOSS, memory_mb=None).get_json()["box"]
    assert (box["network_access"], box["memory_mb"], box["cpus"]) == (True, 2048, 0.5)
    assert store.events("iris")[0].message == "Box changed by boss: memory back to the default"
    assert client.get(f"{BOXES}/get-box?registered_model_name=iris", headers=READER).get_json()["box"] == box
    # Replicas are kept apart from the other settings, and null gives the default (1) back.
    box = update(client, BOSS, replicas=3).get_json()["box"]
    assert (box["replicas"], box["memory_mb"], box["cpus"]) == (3, 2048, 0.5) and "replicas" not in box["using_defaults"]
    assert store.events("iris")[0].message == "Box changed by boss: replicas 3"
    assert update(client, BOSS, replicas=None).get_json()["box"]["replicas"] == 1


def test_a_reader_may_not_change_it(api: Any) -> None:
    client, store = api
    assert "needs MANAGE" in error(update(client, READER, network_access=True), 403, "PERMISSION_DENIED")
    error(update(client, READER, memory_mb=1), 403, "PERMISSION_DENIED")  # permission before validation
    # A model one may not read is one that does not exist.
    error(client.get(f"{BOXES}/get-box?registered_model_name=other", headers=READER), 404, "RESOURCE_DOES_NOT_EXIST")
    error(client.get(f"{BOXES}/get-box?registered_model_name=iris"), 401, "UNAUTHENTICATED")
    assert store.box_settings("iris").updated == 0 and store.events("iris") == []


@pytest.mark.parametrize("body, says", [
    ({"memory_mb": 32}, "from 64"),
    ({"cpus": 0}, "above 0"),
    ({"cpus": 10**6}, "cores x 4"),
    ({"max_processes": 8}, "from 16 to 65536"),
    ({"network_access": "on"}, "true or false"),
    ({"memory": 1024}, "Unknown box setting"),
    ({"replicas": 0}, "from 1 to 64"),
])
def test_bad_input_is_a_clear_error_and_changes_nothing(api: Any, body: dict[str, Any], says: str) -> None:
    client, store = api
    message = error(update(client, BOSS, **{"network_access": True, **body}), 400, "INVALID_PARAMETER_VALUE")
    assert re.search(says, message), message
    assert store.box_settings("iris").network is False and store.events("iris") == []


def test_the_change_is_read_from_a_json_body_only(api: Any) -> None:
    client, store = api
    # What a cross-site form can send: the query string and a form body are not a change.
    resp = client.post(f"{BOXES}/update-box?registered_model_name=iris&network_access=true",
                       data={"network_access": "true"}, headers=BOSS)
    error(resp, 400, "INVALID_PARAMETER_VALUE")
    error(client.post(f"{BOXES}/update-box", data="network_access=true", content_type="text/plain", headers=BOSS),
          400, "MALFORMED_REQUEST")
    assert store.box_settings("iris").network is False


def test_unknown_models_and_the_status_of_a_served_one(api: Any) -> None:
    client, store = api
    error(client.get(f"{BOXES}/get-box?registered_model_name=nope", headers=basic("root", "rootpw")), 404,
          "RESOURCE_DOES_NOT_EXIST")
    error(client.get(f"{BOXES}/get-box", headers=READER), 400, "INVALID_PARAMETER_VALUE")
    store.enable("iris")
    update(client, BOSS, max_processes=64)
    status = client.get("/api/2.0/preview/mlflow/endpoints/get-status?registered_model_name=iris",
                        headers=READER).get_json()["endpoint_status"]
    assert status["box"]["max_processes"] == 64 and status["serving_version"] == "V1"


def test_as_root_a_served_model_shows_its_own_uid(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client, store = api
    monkeypatch.setattr(boxes, "running_as_root", lambda: True)
    monkeypatch.setattr(boxes, "unused_by_accounts", lambda uid: True)
    box = client.get(f"{BOXES}/get-box?registered_model_name=iris", headers=READER).get_json()["box"]
    assert (box["identity"], box["uid"]) == ("own_uid", None)  # not served: no uid used up
    store.enable("iris")
    box = client.get(f"{BOXES}/get-box?registered_model_name=iris", headers=READER).get_json()["box"]
    assert box["uid"] == 70000 == store.model_uid("iris")
    store.enable("other")
    settings = client.application.extensions["modelserve"]["settings"]
    settings.model_uid_end = 70000
    box = client.get(f"{BOXES}/get-box?registered_model_name=other", headers=basic("root", "rootpw")).get_json()["box"]
    assert box["uid"] is None and "no free uid" in box["identity_error"]
