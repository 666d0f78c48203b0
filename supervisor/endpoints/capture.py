"""An endpoint's ``auto_capture_config`` (inference tables) -> one validated form, and back.

Databricks' shape (``catalog_name``, ``schema_name``, ``table_name_prefix``, ``enabled``) names
a Unity Catalog table; here the rows live in the supervisor's store, so the three names are
kept only to be answered back (``payload_table.name``), with the same rule as Databricks: they
cannot change while capture stays on. ``sampling_fraction`` is modelserve's own field, in
(0, 1]. Unknown fields are refused, so a misspelt ``sampling_fracton`` cannot silently capture
every request. The form is kept inside the endpoint's config JSON, so capture switches with the
config (a pending config's capture starts when that config serves). Pure; unit tested.
"""

from __future__ import annotations

import math
import re
from typing import Any

from supervisor.endpoints.errors import ConfigError

_FIELDS = {"catalog_name", "schema_name", "table_name_prefix", "enabled", "sampling_fraction"}
# Answered by GET; a client that sends a read endpoint's config back sends it too.
_IGNORED = {"state"}
_IDENT = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_NAMES = ("catalog_name", "schema_name", "table_name_prefix")
MAX_PREFIX = 63


def parse_capture(raw: Any, endpoint_name: str) -> dict[str, Any] | None:
    """The validated capture config, or None when none was given. Raises ConfigError."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("auto_capture_config must be a JSON object")
    unknown = sorted(set(raw) - _FIELDS - _IGNORED)
    if unknown:
        raise ConfigError(f"Unknown field(s) in auto_capture_config: {', '.join(unknown)}"[:300])
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("auto_capture_config.enabled must be true or false")
    fraction = raw.get("sampling_fraction", 1.0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
            or not 0 < fraction <= 1:
        raise ConfigError(f"auto_capture_config.sampling_fraction must be a number in (0, 1]; got {fraction!r}"[:200])
    out: dict[str, Any] = {"enabled": enabled, "sampling_fraction": float(fraction)}
    for key in _NAMES:
        value = raw.get(key)
        if value in (None, ""):
            value = endpoint_name if key == "table_name_prefix" else "modelserve"
        if not isinstance(value, str) or not _IDENT.match(value):
            raise ConfigError(f"auto_capture_config.{key} must be letters, digits, '-' and '_'; got {value!r}"[:200])
        out[key] = value
    if len(out["table_name_prefix"]) > MAX_PREFIX:
        raise ConfigError(f"auto_capture_config.table_name_prefix has at most {MAX_PREFIX} characters")
    return out


def check_change(old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
    """Databricks' rule: the table's names cannot change while capture is on (before and after)."""
    if old is None or new is None or not old.get("enabled") or not new.get("enabled"):
        return
    changed = [k for k in _NAMES if old.get(k) != new.get(k)]
    if changed:
        raise ConfigError(f"auto_capture_config.{changed[0]} cannot change while capture is enabled; "
                          "disable capture first")


def table_name(capture: dict[str, Any]) -> str:
    return f"{capture['catalog_name']}.{capture['schema_name']}.{capture['table_name_prefix']}_payload"


def capture_json(capture: dict[str, Any]) -> dict[str, Any]:
    """The config as GET answers it (the SDK's ``AutoCaptureConfigOutput``)."""
    status = "ACTIVE" if capture["enabled"] else "DISABLED"
    return {**capture, "state": {"payload_table": {"name": table_name(capture), "status": status,
                                                   "status_message": ""}}}


def sampling(configs: dict[str, dict[str, Any] | None]) -> dict[str, float]:
    """Endpoint name -> its fraction, for the endpoints whose serving config captures (the
    gateway's sampling maps)."""
    return {name: float(c["sampling_fraction"]) for name, c in sorted(configs.items())
            if c is not None and c.get("enabled")}
