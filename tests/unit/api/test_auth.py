"""The serving API and the gateway's check, with access control on and MLflow's users faked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from supervisor.api.auth import decision_cache_control
from supervisor.settings import Settings
from tests.unit.api.conftest import access_app, basic

API = "/api/2.0/preview/mlflow/endpoints"
CHECK = "/internal/auth/check"


@pytest.fixture()
def client(tmp_path: Path) -> FlaskClient:
    grants = {("reader", "a"): "READ", ("boss", "a"): "MANAGE", ("boss", "b"): "READ"}
    app, _ = access_app(tmp_path, ("a", "b", "my model/x"), grants)
    c = app.test_client()
    for name in ("a", "b"):
        assert c.post(f"{API}/enable", json={"registered_model_name": name}, headers=basic("root", "rootpw")
                      ).status_code == 200
    return c


def err(resp: Any, status: int, code: str) -> None:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.get_json()["error_code"] == code


def test_serving_api_permissions(client: FlaskClient) -> None:
    reader, boss = basic("reader", "readerpw"), basic("boss", "bosspw")
    err(client.get(f"{API}/list"), 401, "UNAUTHENTICATED")
    err(client.post(f"{API}/enable", data=b"{not json", content_type="application/json"), 401, "UNAUTHENTICATED")
    assert client.get(f"{API}/list").headers["WWW-Authenticate"].startswith("Basic")
    err(client.get(f"{API}/list", headers=basic("reader", "nope")), 401, "UNAUTHENTICATED")
    names = [e["registered_model_name"] for e in client.get(f"{API}/list", headers=reader).get_json()["endpoints"]]
    assert names == ["a"]
    assert client.get(f"{API}/get-status?registered_model_name=a", headers=reader).status_code == 200
    err(client.get(f"{API}/get-status?registered_model_name=b", headers=reader), 403, "PERMISSION_DENIED")
    err(client.get(f"{API}/get-event-history?registered_model_name=b", headers=reader), 403, "PERMISSION_DENIED")
    err(client.post(f"{API}/disable", json={"registered_model_name": "a"}, headers=reader), 403, "PERMISSION_DENIED")
    err(client.post(f"{API}/enable", json={"registered_model_name": "a"}, headers=reader), 403, "PERMISSION_DENIED")
    err(client.post(f"{API}/disable", json={"registered_model_name": "b"}, headers=boss), 403, "PERMISSION_DENIED")
    assert client.post(f"{API}/disable", json={"registered_model_name": "a"}, headers=boss).status_code == 200
    assert client.post(f"{API}/enable", json={"registered_model_name": "a"}, headers=boss).status_code == 200
    # Permission comes before existence: no probing for model names.
    err(client.get(f"{API}/get-status?registered_model_name=secret", headers=reader), 403, "PERMISSION_DENIED")


def test_gateway_check(client: FlaskClient) -> None:
    reader = basic("reader", "readerpw")
    ok = client.get(CHECK, headers={**reader, "X-Modelserve-Model": "a"})
    assert ok.status_code == 200 and ok.headers["X-Modelserve-User"] == "reader"
    assert client.get(CHECK, headers={**reader, "X-Modelserve-Model": "b"}).status_code == 403
    assert client.get(CHECK, headers={**reader, "X-Modelserve-Model": ""}).status_code == 403
    assert client.get(CHECK, headers={"X-Modelserve-Model": "a"}).status_code == 401
    # The model name arrives percent-encoded; decoding it cannot turn into another model.
    assert client.get(CHECK, headers={**basic("root", "rootpw"), "X-Modelserve-Model": "my%20model%2Fx"}
                      ).status_code == 200
    assert client.get(CHECK, headers={**reader, "X-Modelserve-Model": "%61"}).status_code == 200  # "a"
    assert client.get(CHECK, headers={**reader, "X-Modelserve-Model": "a%00"}).status_code == 403
    assert client.get(CHECK, headers={**reader, "X-Modelserve-Model": "%ff%fe"}).status_code == 403


def test_gateway_check_says_how_long_nginx_may_keep_a_decision(client: FlaskClient) -> None:
    reader = basic("reader", "readerpw")
    policy = "max-age=5, stale-while-revalidate=5, stale-if-error=300"  # the defaults: 10 s cache, 300 s stale
    for headers, status in (({**reader, "X-Modelserve-Model": "a"}, 200), ({**reader, "X-Modelserve-Model": "b"}, 403),
                            ({"X-Modelserve-Model": "a"}, 401)):
        resp = client.get(CHECK, headers=headers)
        assert resp.status_code == status and resp.headers["Cache-Control"] == policy
    assert decision_cache_control(503, Settings()) == "no-store"  # an undecided check is never kept
    assert decision_cache_control(200, Settings(auth_cache_seconds=0)) == "no-store"


def test_token_api(client: FlaskClient) -> None:
    reader = basic("reader", "readerpw")
    made = client.post("/api/2.0/token/create", json={"comment": "ci", "lifetime_seconds": 3600}, headers=reader)
    assert made.status_code == 200
    body = made.get_json()
    token, info = body["token_value"], body["token_info"]
    assert info["comment"] == "ci" and info["expiry_time"] > info["creation_time"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get(CHECK, headers={**bearer, "X-Modelserve-Model": "a"}).status_code == 200
    err(client.post("/api/2.0/modelserve/tokens/create", json={}, headers=bearer), 403, "PERMISSION_DENIED")
    err(client.post("/api/2.0/token/create", json={"lifetime_seconds": "soon"}, headers=reader), 400,
        "INVALID_PARAMETER_VALUE")
    listed = client.get("/api/2.0/modelserve/tokens/list", headers=bearer).get_json()["token_infos"]
    assert [t["token_id"] for t in listed] == [info["token_id"]] and token not in str(listed)
    assert client.get("/api/2.0/token/list", headers=basic("boss", "bosspw")).get_json()["token_infos"] == []
    assert len(client.get("/api/2.0/token/list?all=true", headers=basic("root", "rootpw")).get_json()
               ["token_infos"]) == 1
    err(client.post("/api/2.0/token/delete", json={"token_id": info["token_id"]}, headers=basic("boss", "bosspw")),
        404, "RESOURCE_DOES_NOT_EXIST")
    assert client.post("/api/2.0/token/delete", json={"token_id": info["token_id"]}, headers=reader
                       ).status_code == 200
    err(client.get(CHECK, headers={**bearer, "X-Modelserve-Model": "a"}), 401, "UNAUTHENTICATED")
