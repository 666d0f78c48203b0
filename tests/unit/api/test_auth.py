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
    err(client.get(f"{API}/get-status?registered_model_name=b", headers=reader), 404, "RESOURCE_DOES_NOT_EXIST")
    err(client.get(f"{API}/get-event-history?registered_model_name=b", headers=reader), 404,
        "RESOURCE_DOES_NOT_EXIST")
    # READ is not MANAGE: a reader is told so (the model's existence is no secret to them).
    err(client.post(f"{API}/disable", json={"registered_model_name": "a"}, headers=reader), 403, "PERMISSION_DENIED")
    err(client.post(f"{API}/enable", json={"registered_model_name": "a"}, headers=reader), 403, "PERMISSION_DENIED")
    err(client.post(f"{API}/disable", json={"registered_model_name": "b"}, headers=boss), 403, "PERMISSION_DENIED")
    err(client.post(f"{API}/enable", json={"registered_model_name": "my model/x"}, headers=boss), 404,
        "RESOURCE_DOES_NOT_EXIST")
    assert client.post(f"{API}/disable", json={"registered_model_name": "a"}, headers=boss).status_code == 200
    err(client.get(f"{API}/get-status?registered_model_name=a", headers=boss), 400, "INVALID_PARAMETER_VALUE")
    assert client.post(f"{API}/enable", json={"registered_model_name": "a"}, headers=boss).status_code == 200


# Every operation that names one model, as a client sends it.
MODEL_OPS = [("GET", op) for op in ("get-status", "list-versions", "list-version-aliases", "get-event-history",
                                    "get-metric-history")] + [("POST", op) for op in ("enable", "disable")]


def ask(client: FlaskClient, method: str, op: str, model: str, headers: dict[str, str]) -> Any:
    if method == "GET":
        return client.get(f"{API}/{op}", query_string={"registered_model_name": model}, headers=headers)
    return client.post(f"{API}/{op}", json={"registered_model_name": model}, headers=headers)


def as_for(resp: Any, model: str) -> tuple[int, str, list[tuple[str, str]]]:
    """An answer with the model's name, which the caller sent, taken out of it (and so its length)."""
    return (resp.status_code, resp.get_data(as_text=True).replace(f"'{model}'", "'?'"),
            sorted((k, v) for k, v in resp.headers.items() if k != "Content-Length"))


@pytest.mark.parametrize("default", ["NO_PERMISSIONS", "READ"])
def test_a_model_one_may_not_read_is_answered_as_one_that_does_not_exist(client: FlaskClient, default: str) -> None:
    """``default`` is MLflow's default_permission: what a caller holds on a model nobody granted
    them, which includes one that does not exist."""
    users = client.application.extensions["modelserve"]["access"].users
    users.default = default
    users.grants[("reader", "b")] = "NO_PERMISSIONS"  # served, and closed to the reader
    reader = basic("reader", "readerpw")
    for method, op in MODEL_OPS:
        hidden, missing = ask(client, method, op, "b", reader), ask(client, method, op, "never", reader)
        err(missing, 404, "RESOURCE_DOES_NOT_EXIST")
        assert as_for(hidden, "b") == as_for(missing, "never"), op
    for model in ("b", "never"):
        r = client.post(f"{API}/get-version-logs", json={"registered_model_name": model, "endpoint_version_name": "1"},
                        headers=reader)
        err(r, 404, "RESOURCE_DOES_NOT_EXIST")
        assert r.get_json()["message"] == f"Registered model '{model}' does not exist"
    assert client.get(f"{API}/get-status?registered_model_name=b", headers=basic("root", "rootpw")).status_code == 200


def test_without_valid_credentials_everything_is_401_first(client: FlaskClient) -> None:
    requests = [("GET", f"{API}/get-status?registered_model_name=never", None),
                ("GET", f"{API}/get-status?registered_model_name=b", None),
                ("GET", f"{API}/get-status", None),
                ("POST", f"{API}/enable", b"{not json"),
                ("POST", f"{API}/get-version-logs", b'{"registered_model_name": "a", "endpoint_version_name": "9"}'),
                ("GET", f"{API}/enable", None),  # a 405 otherwise
                ("GET", f"{API}/no-such-op", None),
                ("GET", "/ajax-api/2.0/preview/mlflow/endpoints/list", None),
                ("GET", "/api/2.0/modelserve/no-such-thing", None),
                ("POST", "/api/2.0/token/delete", b'{"token_id": 5}'),
                ("GET", "/metrics", None)]
    for headers in ({}, basic("reader", "wrong"), {"Authorization": "Bearer msk0000"}):
        for method, url, body in requests:
            r = client.open(url, method=method, data=body, content_type="application/json", headers=headers)
            err(r, 401, "UNAUTHENTICATED")
            assert r.headers["WWW-Authenticate"].startswith("Basic"), url
    # What stays open: the health check, the API's description, and signed webhooks.
    assert client.get("/api/2.0/modelserve/health").status_code == 200
    assert client.get("/api/2.0/modelserve/openapi.json").status_code == 200
    assert client.post("/api/2.0/modelserve/webhook", data=b"{}").status_code == 200


def test_gateway_check(client: FlaskClient) -> None:
    reader = basic("reader", "readerpw")
    ok = client.get(CHECK, headers={**reader, "X-Modelserve-Model": "a"})
    assert ok.status_code == 200 and ok.headers["X-Modelserve-User"] == "reader"
    assert client.get(CHECK, headers={**reader, "X-Modelserve-Model": "b"}).status_code == 403
    # A path with no route (no model): a known caller goes on to the gateway's 404, anyone else
    # gets 401 there as everywhere.
    for headers in ({**reader, "X-Modelserve-Model": ""}, reader):
        ok = client.get(CHECK, headers=headers)
        assert ok.status_code == 200 and ok.headers["X-Modelserve-User"] == "reader"
    for headers in ({"X-Modelserve-Model": ""}, {}, basic("reader", "wrong")):
        assert client.get(CHECK, headers=headers).status_code == 401
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
                            ({"X-Modelserve-Model": "a"}, 401), (reader, 200), ({}, 401)):
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
