"""A box change is checked whole: bounds, types, unknown names; null means the default."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.isolation.changes import BadBoxChange, max_cpus, parse_change


def test_fields_map_to_the_store_and_null_means_default() -> None:
    body = {"registered_model_name": "m", "network_access": True, "memory_mb": 64, "cpus": 2,
            "max_processes": 65536}
    assert parse_change(body, cores=1) == {"network": True, "memory_mb": 64, "cpus": 2.0, "max_processes": 65536}
    assert parse_change({"memory_mb": None, "cpus": None, "max_processes": None}) == {
        "memory_mb": None, "cpus": None, "max_processes": None}
    assert parse_change({"registered_model_name": "m"}) == {}
    assert parse_change({"cpus": 4}, cores=1) == {"cpus": 4.0}
    assert parse_change({"replicas": 3}) == {"replicas": 3}
    assert parse_change({"replicas": None}) == {"replicas": None}
    assert max_cpus(3) == 12.0


@pytest.mark.parametrize("body, says", [
    ({"memory_mb": 63}, "from 64"),
    ({"memory_mb": 10**12}, "memory_mb"),
    ({"memory_mb": 100.5}, "whole number"),
    ({"memory_mb": "512"}, "whole number"),
    ({"memory_mb": True}, "whole number"),
    ({"max_processes": 15}, "from 16 to 65536"),
    ({"max_processes": 65537}, "from 16 to 65536"),
    ({"cpus": 0}, "above 0"),
    ({"cpus": -1}, "above 0"),
    ({"cpus": 4.01}, "at most 4"),
    ({"cpus": float("nan")}, "cpus"),
    ({"cpus": float("inf")}, "cpus"),
    ({"cpus": False}, "cpus"),
    ({"network_access": "yes"}, "true or false"),
    ({"network_access": None}, "true or false"),
    ({"network": True}, "Unknown box setting"),
    ({"replicas": 0}, "from 1 to 64"),
    ({"replicas": 65}, "from 1 to 64"),
    ({"replicas": 1.5}, "whole number"),
    ({"replicas": "2"}, "whole number"),
])
def test_bad_values_are_refused_with_the_bounds(body: dict[str, Any], says: str) -> None:
    with pytest.raises(BadBoxChange, match=says):
        parse_change({"network_access": True, **body}, cores=1)
