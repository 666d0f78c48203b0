"""The legacy serving API's shapes and errors, with a fake registry and runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from supervisor.api.app import create_app
from supervisor.registry import RegistryModel, RegistryVersion
from supervisor.runtime.base import HostState
from supervisor.settings import Settings
from supervisor.store import FAILED, READY, Store
from tests.support import FakeRegistry

API = "/api/2.0/preview/mlflow/endpoints"


class FakeRuntime:
    name = "process"

    def host_state(self, model: str) -> HostState | None:
        return HostState(model=model, alive=True, pid=1)

    def version_log(self, model: str, version: str, max_bytes: int = 0) -> str:
        return f"scoring server output of {version}"


@pytest.fixture()
def ctx(tmp_path: Path) -> tuple[FlaskClient, Store, FakeRegistry]:
    # Shapes only: access control has its own tests (tests/unit/api/test_auth.py).
    settings = Settings(data_dir=tmp_path, auth=False)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    registry = FakeRegistry({"iris": RegistryModel("iris", (RegistryVersion("1"),))})
    app = create_app(settings, store=store, registry=registry, runtime=FakeRuntime())  # type: ignore[arg-type]
    return app.test_client(), store, registry


def test_enable_status_versions_aliases_events(ctx: Any) -> None:
    client, store, _ = ctx
    assert client.post(f"{API}/enable", json={"registered_model_name": "iris"}).get_json() == {}
    store.upsert_deployment("iris", "1", state=READY, stage="Production", port=1)
    store.upsert_deployment("iris", "2", state=FAILED, state_message="boom")
    status = client.get(f"{API}/get-status?registered_model_name=iris").get_json()["endpoint_status"]
    assert status["registered_model_name"] == "iris"
    assert status["state"] == "ENDPOINT_STATE_READY"
    assert status["serving_version"] == "V1"
    versions = client.get(f"{API}/list-versions", query_string={"registered_model_name": "iris"}).get_json()
    assert versions == {"endpoint_versions": [
        {"registered_model_name": "iris", "endpoint_version_name": "1", "state": "VERSION_STATE_READY"},
        {"registered_model_name": "iris", "endpoint_version_name": "2", "state": "VERSION_STATE_FAILED",
         "state_message": "boom"}]}
    aliases = client.get(f"{API}/list-version-aliases?registered_model_name=iris").get_json()
    assert aliases == {"aliases": [{"alias": "Production", "endpoint_version_name": "1"}]}
    events = client.get(f"{API}/get-event-history?registered_model_name=iris").get_json()["events"]
    assert events[0]["event_type"] == "MODEL_UPDATE" and events[0]["message"] == "Serving enabled"
    assert [e["registered_model_name"] for e in client.get(f"{API}/list").get_json()["endpoints"]] == ["iris"]
    logs = client.post(f"{API}/get-version-logs",
                       json={"registered_model_name": "iris", "endpoint_version_name": "1"}).get_json()
    assert "scoring server output of 1" in logs["logs"]
    # The ajax-api prefix the Databricks UI used answers the same.
    assert client.get("/ajax-api/2.0/preview/mlflow/endpoints/list").status_code == 200


def test_errors_are_databricks_json(ctx: Any) -> None:
    client, _, registry = ctx

    def err(resp: Any, status: int, code: str) -> None:
        assert resp.status_code == status, resp.get_data(as_text=True)
        assert resp.get_json()["error_code"] == code

    err(client.get(f"{API}/get-status?registered_model_name=nope"), 404, "RESOURCE_DOES_NOT_EXIST")
    err(client.get(f"{API}/get-status?registered_model_name=iris"), 400, "INVALID_PARAMETER_VALUE")
    err(client.get(f"{API}/get-status"), 400, "INVALID_PARAMETER_VALUE")
    err(client.post(f"{API}/enable", json={"registered_model_name": "nope"}), 404, "RESOURCE_DOES_NOT_EXIST")
    err(client.post(f"{API}/enable", data="not json", content_type="application/json"), 400, "MALFORMED_REQUEST")
    err(client.post(f"{API}/enable", json=["x"]), 400, "MALFORMED_REQUEST")
    err(client.post(f"{API}/enable", json={"registered_model_name": 5}), 400, "INVALID_PARAMETER_VALUE")
    err(client.post(f"{API}/disable", json={"registered_model_name": "iris"}), 400, "INVALID_PARAMETER_VALUE")
    err(client.get(f"{API}/enable"), 405, "BAD_REQUEST")
    assert "POST" in client.get(f"{API}/enable").headers["Allow"]  # RFC 9110; found by schemathesis
    err(client.get(f"{API}/nothing-here"), 404, "ENDPOINT_NOT_FOUND")
    client.post(f"{API}/enable", json={"registered_model_name": "iris"})
    err(client.post(f"{API}/get-version-logs", json={"registered_model_name": "iris", "endpoint_version_name": "9"}),
        404, "RESOURCE_DOES_NOT_EXIST")
    registry.down = True
    err(client.post(f"{API}/enable", json={"registered_model_name": "other"}), 503, "TEMPORARILY_UNAVAILABLE")
    # A refused request changed nothing.
    assert [e["registered_model_name"] for e in client.get(f"{API}/list").get_json()["endpoints"]] == ["iris"]


def test_disable_records_an_event(ctx: Any) -> None:
    client, store, _ = ctx
    client.post(f"{API}/enable", json={"registered_model_name": "iris"})
    assert client.post(f"{API}/disable", json={"registered_model_name": "iris"}).status_code == 200
    assert not store.is_enabled("iris")
    assert [e.message for e in store.events("iris")] == ["Serving disabled", "Serving enabled"]
