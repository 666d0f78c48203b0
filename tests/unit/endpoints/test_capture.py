"""auto_capture_config: Databricks' shape plus a sampling fraction, bad values refused, names frozen while on."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.endpoints.capture import capture_json, check_change, parse_capture, sampling
from supervisor.endpoints.config import ConfigError, parse_config
from supervisor.endpoints.view import config_json


def config(capture: Any) -> dict[str, Any]:
    return {"served_entities": [{"entity_name": "iris", "entity_version": "1"}], "auto_capture_config": capture}


def test_the_databricks_shape_is_kept_with_defaults_and_answered_with_its_table() -> None:
    cfg = parse_config(config({"catalog_name": "main", "schema_name": "ml", "enabled": True}), "ep")
    capture = cfg["auto_capture_config"]
    assert capture == {"enabled": True, "sampling_fraction": 1.0, "catalog_name": "main", "schema_name": "ml",
                       "table_name_prefix": "ep"}
    out = config_json(cfg, 1, {})["auto_capture_config"]
    assert out["state"]["payload_table"] == {"name": "main.ml.ep_payload", "status": "ACTIVE", "status_message": ""}
    assert out["sampling_fraction"] == 1.0


def test_no_capture_config_leaves_the_config_without_one() -> None:
    cfg = parse_config(config(None), "ep")
    assert "auto_capture_config" not in cfg and "auto_capture_config" not in config_json(cfg, 1, {})


def test_a_config_read_back_with_its_state_is_accepted() -> None:
    answered = capture_json(parse_capture({"enabled": False, "sampling_fraction": 0.25}, "ep") or {})
    assert parse_capture(answered, "ep") == {k: v for k, v in answered.items() if k != "state"}
    assert answered["state"]["payload_table"]["status"] == "DISABLED"


@pytest.mark.parametrize("raw, words", [
    ({"sampling_fraction": 0}, "(0, 1]"),
    ({"sampling_fraction": -0.5}, "(0, 1]"),
    ({"sampling_fraction": 1.5}, "(0, 1]"),
    ({"sampling_fraction": float("nan")}, "(0, 1]"),
    ({"sampling_fraction": "0.5"}, "(0, 1]"),
    ({"sampling_fraction": True}, "(0, 1]"),
    ({"enabled": "yes"}, "true or false"),
    ({"sampling_fracton": 0.5}, "Unknown field(s) in auto_capture_config: sampling_fracton"),
    ({"table_name_prefix": "a" * 64}, "at most 63"),
    ({"catalog_name": "bad name"}, "letters, digits"),
    ("on", "JSON object"),
])
def test_bad_capture_configs_are_refused(raw: Any, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(raw), "ep")
    assert info.value.error_code == "INVALID_PARAMETER_VALUE" and words in info.value.message


def test_the_table_names_cannot_change_while_capture_stays_on() -> None:
    on = parse_capture({"enabled": True, "table_name_prefix": "a"}, "ep")
    renamed = parse_capture({"enabled": True, "table_name_prefix": "b"}, "ep")
    off = parse_capture({"enabled": False, "table_name_prefix": "b"}, "ep")
    with pytest.raises(ConfigError, match="table_name_prefix cannot change"):
        check_change(on, renamed)
    check_change(on, off)  # turning it off first is the way
    check_change(off, renamed)
    check_change(None, renamed)
    check_change(on, parse_capture({"enabled": True, "table_name_prefix": "a", "sampling_fraction": 0.1}, "ep"))


def test_only_enabled_captures_are_sampled_by_the_gateway() -> None:
    assert sampling({"b": parse_capture({"sampling_fraction": 0.5}, "b"), "a": None,
                     "c": parse_capture({"enabled": False}, "c")}) == {"b": 0.5}
