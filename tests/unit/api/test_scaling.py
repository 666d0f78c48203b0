"""get-scale-to-zero and update-scale-to-zero: READ shows the setting, MANAGE changes it, bad input
changes nothing."""

from __future__ import annotations

from pathlib import Path

from tests.unit.api.conftest import access_app, basic

ROOT, READER, BOSS = basic("root", "rootpw"), basic("reader", "readerpw"), basic("boss", "bosspw")
API = "/api/2.0/modelserve/served-models"


def test_manage_sets_it_read_shows_it_and_bad_input_changes_nothing(tmp_path: Path) -> None:
    app, store = access_app(tmp_path, ["iris"], {("boss", "iris"): "MANAGE", ("reader", "iris"): "READ"})
    c = app.test_client()
    shown = c.get(f"{API}/get-scale-to-zero?registered_model_name=iris", headers=READER)
    assert shown.json == {"registered_model_name": "iris", "scale_to_zero_enabled": False, "idle_seconds": 1800.0}
    assert c.post(f"{API}/update-scale-to-zero", json={"registered_model_name": "iris", "scale_to_zero_enabled": True},
                  headers=READER).status_code == 403
    for bad in ({"scale_to_zero_enabled": "yes"}, {"scale_to_zero_enabled": 1}, {},
                {"scale_to_zero_enabled": True, "idle": 5}):
        r = c.post(f"{API}/update-scale-to-zero", json={"registered_model_name": "iris", **bad}, headers=BOSS)
        assert (r.status_code, r.json["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), bad
    assert store.scale_to_zero_models() == set()
    on = c.post(f"{API}/update-scale-to-zero", json={"registered_model_name": "iris", "scale_to_zero_enabled": True},
                headers=BOSS)
    assert on.json["scale_to_zero_enabled"] is True and store.scale_to_zero_models() == {"iris"}
    assert any(e.message == "Scale to zero on, set by boss" for e in store.events("iris"))
    off = c.post(f"{API}/update-scale-to-zero", json={"registered_model_name": "iris", "scale_to_zero_enabled": False},
                 headers=ROOT)
    assert off.json["scale_to_zero_enabled"] is False and store.scale_to_zero_models() == set()
    missing = c.get(f"{API}/get-scale-to-zero?registered_model_name=nowhere", headers=ROOT)
    assert missing.status_code == 404
