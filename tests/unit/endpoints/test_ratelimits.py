"""Rate limits in both Databricks shapes -> one form, bad input refused, and the gateway's zones."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.endpoints.config import ConfigError
from supervisor.endpoints.ratelimits import (
    limit_zones,
    nginx_limits,
    parse_ai_gateway,
    parse_rate_limits,
    retry_after,
)


def test_both_shapes_give_one_form_with_the_defaults_filled_in() -> None:
    assert parse_rate_limits([{"calls": 10}]) == [{"calls": 10, "key": "endpoint", "renewal_period": "minute"}]
    assert parse_rate_limits(None) == [] and parse_rate_limits([]) == []
    assert parse_ai_gateway({"rate_limits": [{"calls": 5, "key": "user", "principal": "ann"}],
                             "usage_tracking_config": {"enabled": False}}) == [
        {"calls": 5, "key": "user", "renewal_period": "minute", "principal": "ann"}]
    assert parse_ai_gateway({}) == []


@pytest.mark.parametrize("raw", [
    "10", [10], [{"calls": 0}], [{"calls": -1}], [{"calls": 1.5}], [{"calls": True}], [{"calls": "5"}], [{}],
    [{"calls": 5, "key": "user_group"}], [{"calls": 5, "key": "service_principal"}], [{"calls": 5, "key": "ip"}],
    [{"calls": 5, "renewal_period": "hour"}], [{"calls": 5, "tokens": 100}], [{"calls": 5, "call": 6}],
    [{"calls": 5, "principal": "ann", "key": "user"}],  # principal: the AI Gateway's shape only
    [{"calls": 5}, {"calls": 6}], [{"calls": 5}] * 21, [{"calls": 6_000_001}],
])
def test_bad_legacy_limits_are_refused(raw: Any) -> None:
    with pytest.raises(ConfigError):
        parse_rate_limits(raw)


@pytest.mark.parametrize("raw", [
    [], {"rate_limits": [{"calls": 5, "key": "endpoint", "principal": "ann"}]},
    {"rate_limits": [{"calls": 5, "key": "user", "principal": ""}]},
    {"rate_limits": [{"calls": 5, "key": "user", "principal": "a\nb"}]},
    {"guardrails": {"input": {"pii": {"behavior": "BLOCK"}}}}, {"inference_table_config": {"enabled": True}},
    {"fallback_config": {"enabled": True}}, {"limits": []},
])
def test_bad_ai_gateway_configs_are_refused(raw: Any) -> None:
    with pytest.raises(ConfigError):
        parse_ai_gateway(raw)


def test_zones_per_limit_with_a_users_own_limit_taken_out_of_the_default() -> None:
    limits = {"ep": [{"calls": 10, "key": "user"}, {"calls": 100, "key": "user", "principal": "ann"},
                     {"calls": 1000, "key": "endpoint"}], "other": [{"calls": 7, "key": "endpoint"}]}
    zones = limit_zones(limits)
    assert [(z.endpoint, z.key, z.principal, z.excluded) for z in zones] == [
        ("ep", "user", None, ("ann",)), ("ep", "user", "ann", ()), ("ep", "endpoint", None, ()),
        ("other", "endpoint", None, ())]
    assert len({z.zone for z in zones}) == 4
    # A changed number of calls is a new zone (a fresh bucket); the same limit keeps its zone.
    assert limit_zones({"ep": [{"calls": 11, "key": "user"}]})[0].zone != zones[0].zone
    assert limit_zones({"ep": [{"calls": 10, "key": "user"}]})[0].zone == zones[0].zone
    assert retry_after(zones) == {"ep": 6, "other": 9}
    rendered = nginx_limits(zones)
    assert rendered["zones"][0]["entries"] == [('"ep|ann"', '""'), ('"ep|"', '""'), ('"~^ep[|]"', "$ms_principal")]
    assert rendered["zones"][1]["entries"] == [('"ep|ann"', '"u"')]
    assert rendered["retry"] == [('"ep"', "6"), ('"other"', "9")]


def test_a_user_name_is_quoted_so_it_cannot_end_the_map_entry() -> None:
    zone = limit_zones({"ep": [{"calls": 3, "key": "user", "principal": 'x" $y; }'}]})[0]
    assert nginx_limits([zone])["zones"][0]["entries"] == [('"ep|x\\" $y; }"', '"u"')]
