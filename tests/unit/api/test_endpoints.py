"""The serving endpoints API in-process (fake registry and users): shapes, rights, refusals.
The real clients against the real system are tests/e2e/test_endpoints.py's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from supervisor.registry import RegistryModel, RegistryVersion
from supervisor.store import READY
from tests.unit.api.conftest import access_app, basic

ROOT, READER, BOSS = basic("root", "rootpw"), basic("reader", "readerpw"), basic("boss", "bosspw")
EP = "/api/2.0/serving-endpoints"


def body(name: str = "ep", model: str = "iris", version: str = "1") -> dict[str, Any]:
    return {"name": name, "config": {"served_entities": [{"entity_name": model, "entity_version": version}]}}


def client(tmp_path: Path) -> FlaskClient:
    app, _ = access_app(tmp_path, ["iris", "secret"], {("boss", "iris"): "READ", ("reader", "iris"): "READ"})
    return app.test_client()


def test_create_get_list_update_and_delete_in_the_clients_shapes(tmp_path: Path) -> None:
    c = client(tmp_path)
    made = c.post(EP + "/", json=body(), headers=BOSS)  # MLflow's trailing slash
    assert made.status_code == 200, made.json
    ep = made.json
    assert ep["name"] == "ep" and ep["creator"] == "boss" and ep["permission_level"] == "CAN_MANAGE"
    assert ep["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
    assert "config" not in ep and ep["pending_config"]["config_version"] == 1
    assert ep["pending_config"]["served_entities"][0]["state"]["deployment"] == "DEPLOYMENT_CREATING"
    assert c.get(EP, headers=BOSS).json["endpoints"][0]["name"] == "ep"
    assert c.get(EP + "/", headers=READER).json == {"endpoints": []}  # no grant: not listed
    assert c.get(EP + "/ep", headers=READER).status_code == 403
    again = c.put(EP + "/ep/config", json=body()["config"], headers=BOSS)
    assert again.status_code == 409 and again.json["error_code"] == "RESOURCE_CONFLICT"
    doc = c.get(EP + "/ep/openapi", headers=BOSS).json
    assert list(doc["paths"]) == ["/serving-endpoints/ep/invocations"] and doc["openapi"].startswith("3.")
    assert c.get(EP + "/ep/metrics", headers=BOSS).content_type.startswith("text/plain")
    tags = c.patch(EP + "/ep/tags", json={"add_tags": [{"key": "team", "value": "a"}]}, headers=BOSS)
    assert tags.json == {"tags": [{"key": "team", "value": "a"}]}
    perms = c.patch(f"/api/2.0/permissions/serving-endpoints/{ep['id']}", headers=BOSS,
                    json={"access_control_list": [{"user_name": "reader", "permission_level": "CAN_VIEW"}]})
    assert {a["user_name"] for a in perms.json["access_control_list"]} == {"boss", "reader"}
    assert c.get(EP + "/ep", headers=READER).json["permission_level"] == "CAN_VIEW"
    assert c.delete(EP + "/ep", headers=READER).status_code == 403
    assert c.delete(EP + "/ep", headers=BOSS).json == {}
    gone = c.get(EP + "/ep", headers=BOSS)
    assert gone.status_code == 404 and gone.json["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_bad_input_is_refused_with_the_reference_codes_and_changes_nothing(tmp_path: Path) -> None:
    c = client(tmp_path)
    cases = [
        (body(name="x" * 64), 400, "INVALID_PARAMETER_VALUE"),
        (body(name="no spaces"), 400, "INVALID_PARAMETER_VALUE"),
        (body(model="secret"), 404, "RESOURCE_DOES_NOT_EXIST"),  # boss cannot read it: as if it did not exist
        (body(model="nowhere"), 404, "RESOURCE_DOES_NOT_EXIST"),
        (body(version="7"), 404, "RESOURCE_DOES_NOT_EXIST"),
        ({"name": "ep", "config": {"served_entities": [{"entity_name": "iris", "entity_version": "1"}],
                                   "traffic_config": {"routes": [{"served_model_name": "iris-1",
                                                                  "traffic_percentage": 90}]}}},
         400, "INVALID_PARAMETER_VALUE"),
    ]
    for sent, status, code in cases:
        r = c.post(EP, json=sent, headers=BOSS)
        assert (r.status_code, r.json["error_code"]) == (status, code), (sent, r.json)
    malformed = c.post(EP, data=b"{not json", headers={**BOSS, "Content-Type": "application/json"})
    assert malformed.status_code == 400 and malformed.json["error_code"] == "MALFORMED_REQUEST"
    assert c.get(EP, headers=ROOT).json == {"endpoints": []}
    assert c.post(EP, json=body(), headers=BOSS).status_code == 200
    twin = c.post(EP, json=body(name="EP"), headers=BOSS)
    assert twin.status_code == 409 and twin.json["error_code"] == "RESOURCE_ALREADY_EXISTS"


def test_the_host_metadata_probe_needs_no_credentials(tmp_path: Path) -> None:
    r = client(tmp_path).get("/.well-known/databricks-config")
    assert r.status_code == 200 and r.json["workspace_id"].isdigit() and "oidc_endpoint" not in r.json


def test_the_endpoint_page_draws_the_split_and_the_status_page_links_to_it(tmp_path: Path) -> None:
    app, store = access_app(tmp_path, ["iris"], {("boss", "iris"): "READ"})
    app.extensions["modelserve"]["registry"].models["iris"] = RegistryModel("iris", (RegistryVersion("1"),
                                                                                     RegistryVersion("2")))
    c = app.test_client()
    two = {"served_entities": [{"entity_name": "iris", "entity_version": "1"},
                               {"entity_name": "iris", "entity_version": "2"}],
           "traffic_config": {"routes": [{"served_model_name": "iris-1", "traffic_percentage": 80},
                                         {"served_model_name": "iris-2", "traffic_percentage": 20}]}}
    assert c.post(EP, json={"name": "ep", "config": two}, headers=BOSS).status_code == 200
    store.upsert_deployment("iris", "1", state=READY, port=20001)
    page = c.get("/serving/endpoint?name=ep", headers=BOSS)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'style="width:80%">iris-1 80%' in html and 'style="width:20%">iris-2 20%' in html
    assert "Rolling out" in html and "IN_PROGRESS" in html and 'id="testbox"' in html
    status = c.get("/serving/", headers=BOSS).get_data(as_text=True)
    assert "/serving/endpoint?name=ep" in status
    # Without a grant on the endpoint, it is not listed and its page does not exist.
    assert "/serving/endpoint?name=ep" not in c.get("/serving/", headers=READER).get_data(as_text=True)
    assert c.get("/serving/endpoint?name=ep", headers=READER).status_code == 404


def test_rate_limits_in_both_shapes_need_can_manage_and_bad_ones_change_nothing(tmp_path: Path) -> None:
    c = client(tmp_path)
    made = c.post(EP, json={**body(), "rate_limits": [{"calls": 10, "key": "user", "renewal_period": "minute"}]},
                  headers=BOSS)
    assert made.json["ai_gateway"] == {"rate_limits": [{"calls": 10, "key": "user", "renewal_period": "minute"}]}
    put = c.put(EP + "/ep/rate-limits", json={"rate_limits": [{"calls": 5}]}, headers=BOSS)
    assert put.json == {"rate_limits": [{"calls": 5, "key": "endpoint", "renewal_period": "minute"}]}
    gw = c.put(EP + "/ep/ai-gateway", json={"rate_limits": [{"calls": 2, "key": "user", "principal": "reader",
                                                             "renewal_period": "minute"}]}, headers=BOSS)
    assert gw.json["rate_limits"][0]["principal"] == "reader"
    now = c.get(EP + "/ep", headers=BOSS).json["ai_gateway"]
    for sent in ({"rate_limits": [{"calls": 0}]}, {"rate_limits": [{"calls": -3}]}, {"rate_limits": [{"calls": 1}],
                 "color": "red"}, {"rate_limits": [{"calls": 5, "key": "user_group"}]}, {"rate_limits": "5"}):
        r = c.put(EP + "/ep/rate-limits", json=sent, headers=BOSS)
        assert (r.status_code, r.json["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), (sent, r.json)
    bad_gw = c.put(EP + "/ep/ai-gateway", json={"guardrails": {"input": {"safety": True}}}, headers=BOSS)
    assert bad_gw.status_code == 400
    c.patch("/api/2.0/permissions/serving-endpoints/" + made.json["id"], headers=BOSS,
            json={"access_control_list": [{"user_name": "reader", "permission_level": "CAN_QUERY"}]})
    assert c.put(EP + "/ep/rate-limits", json={"rate_limits": []}, headers=READER).status_code == 403
    assert c.get(EP + "/ep", headers=BOSS).json["ai_gateway"] == now
    refused = c.post(EP, json={**body(name="ep2"), "rate_limits": [{"calls": 0}]}, headers=BOSS)
    assert refused.status_code == 400 and c.get(EP + "/ep2", headers=BOSS).status_code == 404
    assert c.put(EP + "/ep/rate-limits", json={"rate_limits": []}, headers=BOSS).json == {"rate_limits": []}
    assert "ai_gateway" not in c.get(EP + "/ep", headers=BOSS).json
