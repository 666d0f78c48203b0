"""Endpoint configs as both clients send them, normalised; bad ones refused with the reference's code."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.endpoints.config import ConfigError, check_name, parse_config, resolve, tags_after
from supervisor.registry import RegistryModel, RegistryVersion


def one(**extra: Any) -> dict[str, Any]:
    return {"served_entities": [{"entity_name": "iris", "entity_version": "1", **extra}]}


def test_one_entity_gets_a_default_name_and_the_whole_traffic() -> None:
    cfg = parse_config(one(), "ep")
    assert cfg["served_entities"][0]["name"] == "iris-1"
    assert cfg["traffic_config"] == {"routes": [{"served_model_name": "iris-1", "traffic_percentage": 100}]}


def test_both_clients_spellings_are_accepted() -> None:
    # The SDK's config.name, MLflow's deprecated served_models, string percentages, either route key.
    cfg = parse_config({"name": "ep", "served_models": [
        {"model_name": "my model", "model_version": 2, "scale_to_zero_enabled": False, "name": "a"},
        {"model_name": "iris", "model_version": "@champion", "scale_to_zero_enabled": False}],
        "traffic_config": {"routes": [{"served_model_name": "a", "traffic_percentage": "90"},
                                      {"served_entity_name": "iris-champion", "traffic_percentage": 10}]},
        "task": "ignored"}, "ep")
    assert [(e["entity_name"], e["entity_version"]) for e in cfg["served_entities"]] == [
        ("my model", "2"), ("iris", "@champion")]
    assert [r["traffic_percentage"] for r in cfg["traffic_config"]["routes"]] == [90, 10]


@pytest.mark.parametrize("body, words", [
    ({"served_entities": []}, "at least one"),
    ({"served_entities": [{"entity_name": "m", "entity_version": str(i)} for i in range(1, 17)]}, "more than 15"),
    ({"served_entities": [{"entity_name": "m", "entity_version": "1"}, {"entity_name": "m", "entity_version": "2"}],
      "traffic_config": {"routes": [{"served_model_name": "m-1", "traffic_percentage": 60},
                                    {"served_model_name": "m-2", "traffic_percentage": 30}]}}, "sum to 100"),
    ({"served_entities": [{"entity_name": "m", "entity_version": "1"}, {"entity_name": "m", "entity_version": "2"}]},
     "required"),
    ({"served_entities": [{"entity_name": "m", "entity_version": "1"}, {"entity_name": "m", "entity_version": "1",
                                                                        "name": "b"}]}, "same model and version"),
    (one(name="bad name!"), "letters, digits"),
    (one(environment_vars={"A": "1"}), "environment_vars"),
    (one(entity_version="latest"), "not a version number"),
    ({"served_entities": [{"entity_name": "m", "entity_version": "1"}],
      "traffic_config": {"routes": [{"served_model_name": "m-1", "traffic_percentage": 101}]}}, "0 to 100"),
    ({"name": "other", **one()}, "differs"),
    ("not an object", "JSON object"),
])
def test_bad_configs_are_refused(body: Any, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(body, "ep")
    assert info.value.error_code == "INVALID_PARAMETER_VALUE" and words in info.value.message


@pytest.mark.parametrize("name", ["", "a" * 64, "sp ace", "dot.ted", "slash/", None, 7])
def test_endpoint_names_follow_the_63_character_rule(name: Any) -> None:
    with pytest.raises(ConfigError):
        check_name(name)
    assert check_name("a" * 63) == "a" * 63 and check_name("A-b_9") == "A-b_9"


def test_references_resolve_like_the_legacy_uris() -> None:
    rm = RegistryModel("m", (RegistryVersion("1", "Production"), RegistryVersion("2", "Production", ("champion",)),
                             RegistryVersion("3", status="PENDING_REGISTRATION")))
    assert [resolve(rm, r).version for r in ("1", "Production", "@champion")] == ["1", "2", "2"]  # type: ignore[union-attr]
    assert resolve(rm, "3") is None and resolve(rm, "Staging") is None and resolve(None, "1") is None


def test_tags_are_added_replaced_and_deleted() -> None:
    tags = tags_after([{"key": "a", "value": "1"}], [{"key": "a", "value": "2"}, {"key": "b"}], ["c"])
    assert tags == [{"key": "a", "value": "2"}, {"key": "b", "value": ""}]
    assert tags_after(tags, None, ["a"]) == [{"key": "b", "value": ""}]
    with pytest.raises(ConfigError):
        tags_after([], [{"value": "no key"}], None)
