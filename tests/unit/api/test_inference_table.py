"""The inference table over HTTP: capture configs accepted and answered, export only for CAN_MANAGE."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

from tests.unit.api.conftest import access_app, basic
from tests.unit.test_store_capture import row

READER, BOSS = basic("reader", "readerpw"), basic("boss", "bosspw")
EP = "/api/2.0/serving-endpoints"
TABLE = "/api/2.0/modelserve/serving-endpoints/ep/inference-table"


def body(capture: dict[str, Any] | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"served_entities": [{"entity_name": "iris", "entity_version": "1"}]}
    if capture is not None:
        cfg["auto_capture_config"] = capture
    return {"name": "ep", "config": cfg}


def test_capture_is_configured_and_only_can_manage_reads_the_rows(tmp_path: Path) -> None:
    app, store = access_app(tmp_path, ["iris"], {("boss", "iris"): "READ", ("reader", "iris"): "READ"})
    c = app.test_client()
    made = c.post(EP, json=body({"catalog_name": "main", "schema_name": "ml", "sampling_fraction": 0.5}),
                  headers=BOSS)
    assert made.status_code == 200, made.json
    capture = made.json["pending_config"]["auto_capture_config"]
    assert capture["sampling_fraction"] == 0.5 and capture["state"]["payload_table"]["name"] == "main.ml.ep_payload"
    ep_id = made.json["id"]
    store.commit_capture([{**row(n, ep_id), "endpoint": "ep"} for n in range(3)] + [row(9, "other")],
                         [], [], "capture", "{}")

    lines = c.get(TABLE, headers=BOSS)
    assert lines.status_code == 200 and lines.content_type == "application/x-ndjson"
    frame = pd.read_json(io.BytesIO(lines.data), lines=True, dtype=False)
    assert frame["request_id"].tolist() == [f"{n:032x}" for n in range(3)]
    table = pd.read_parquet(io.BytesIO(c.get(TABLE + "?format=parquet&since_ms=1001", headers=BOSS).data))
    assert table["request_id"].tolist() == [f"{n:032x}" for n in (1, 2)]
    assert len(pd.read_json(io.BytesIO(c.get(TABLE + "?limit=1", headers=BOSS).data), lines=True)) == 1

    c.patch(f"/api/2.0/permissions/serving-endpoints/{ep_id}", headers=BOSS,
            json={"access_control_list": [{"user_name": "reader", "permission_level": "CAN_QUERY"}]})
    denied = c.get(TABLE, headers=READER)
    assert denied.status_code == 403 and denied.json["error_code"] == "PERMISSION_DENIED"
    assert c.get(TABLE.replace("/ep/", "/nope/"), headers=BOSS).status_code == 404
    for query in ("?format=csv", "?since_ms=x", "?limit=0", "?since_ms=-1"):
        bad = c.get(TABLE + query, headers=BOSS)
        assert (bad.status_code, bad.json["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), query


def test_bad_capture_configs_change_nothing_and_names_stay_while_on(tmp_path: Path) -> None:
    app, store = access_app(tmp_path, ["iris"], {("boss", "iris"): "READ"})
    c = app.test_client()
    for capture in ({"sampling_fraction": 0}, {"sampling_fraction": 1.01}, {"enabled": True, "colour": "red"}):
        refused = c.post(EP, json=body(capture), headers=BOSS)
        assert (refused.status_code, refused.json["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), capture
    assert store.endpoints() == []
    assert c.post(EP, json=body({"table_name_prefix": "a"}), headers=BOSS).status_code == 200
    ep = store.endpoint("ep")
    assert ep is not None and ep.pending_version is not None
    store.promote_config("ep", ep.pending_version)
    renamed = c.put(EP + "/ep/config", json=body({"table_name_prefix": "b"})["config"], headers=BOSS)
    assert renamed.status_code == 400 and "cannot change" in renamed.json["message"]
    off = c.put(EP + "/ep/config", json=body({"enabled": False, "table_name_prefix": "b"})["config"], headers=BOSS)
    assert off.status_code == 200, off.json
