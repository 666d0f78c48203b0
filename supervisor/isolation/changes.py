"""A MANAGE user's change of a model's box, checked before anything is stored.

Pure (no I/O beyond counting this machine's cores) so that the API, the pages and the tests share
one set of rules, and a refused change is refused whole: either every field is valid and the
change is stored, or nothing is. The bounds keep a model startable (below 64 MiB or 16
processes a Python scoring server cannot start at all) and the values within what the store's
integer columns and the kernel's limits take.
"""

from __future__ import annotations

import math
import os
from typing import Any

# The API's names for the box settings, and the store's.
API_FIELDS = {"network_access": "network", "memory_mb": "memory_mb", "cpus": "cpus",
              "max_processes": "max_processes", "replicas": "replicas"}
MIN_MEMORY_MB = 64
MAX_MEMORY_MB = 1024 * 1024  # 1 TiB
MIN_PROCESSES = 16
MAX_PROCESSES = 65536
MAX_REPLICAS = 64  # copies of each version (swarm runtime); one-host runtimes run one
CPUS_PER_CORE = 4


class BadBoxChange(ValueError):
    """A change that names an unknown setting or a value out of bounds; its text says which."""


def max_cpus(cores: int | None = None) -> float:
    return float((cores or os.cpu_count() or 1) * CPUS_PER_CORE)


def _integer(key: str, value: Any, low: int, high: int, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadBoxChange(f"'{key}' must be a whole number of {unit} from {low} to {high}, or null for the "
                           f"default (got {value!r})")
    return value


def _cpus(value: Any, cores: int | None) -> float:
    high = max_cpus(cores)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not 0 < value <= high):
        raise BadBoxChange(f"'cpus' must be a number above 0 and at most {high:g} (this machine's cores x "
                           f"{CPUS_PER_CORE}), or null for the default (got {value!r})")
    return float(value)


def parse_change(body: dict[str, Any], cores: int | None = None) -> dict[str, Any]:
    """The store's fields to set from an API body's box fields (absent: unchanged; null: the
    default). Other keys of ``body`` than the model's name are refused: a misspelt setting must
    not look saved."""
    unknown = sorted(set(body) - set(API_FIELDS) - {"registered_model_name"})
    if unknown:
        raise BadBoxChange(f"Unknown box setting(s) {', '.join(map(repr, unknown))}; the settings are "
                           f"{', '.join(API_FIELDS)}")
    out: dict[str, Any] = {}
    if "network_access" in body:
        if not isinstance(body["network_access"], bool):
            raise BadBoxChange(f"'network_access' must be true or false (got {body['network_access']!r})")
        out["network"] = body["network_access"]
    if body.get("memory_mb") is not None:
        out["memory_mb"] = _integer("memory_mb", body["memory_mb"], MIN_MEMORY_MB, MAX_MEMORY_MB, "MiB")
    if body.get("max_processes") is not None:
        out["max_processes"] = _integer("max_processes", body["max_processes"], MIN_PROCESSES, MAX_PROCESSES,
                                        "processes")
    if body.get("cpus") is not None:
        out["cpus"] = _cpus(body["cpus"], cores)
    if body.get("replicas") is not None:
        out["replicas"] = _integer("replicas", body["replicas"], 1, MAX_REPLICAS, "replicas")
    for key in ("memory_mb", "cpus", "max_processes", "replicas"):
        if key in body and body[key] is None:
            out[key] = None
    return out
