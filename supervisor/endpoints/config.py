"""An endpoint config as the Databricks clients send it -> one normalised, validated form.

Both clients' shapes are accepted (``served_entities`` or the deprecated ``served_models``, a
route named by ``served_model_name`` or ``served_entity_name``, a percentage as a number or a
numeric string, unknown keys ignored) and one form is kept, so nothing downstream needs to know
which client wrote it. What the clone cannot honour (environment variables, external models) is
refused with INVALID_PARAMETER_VALUE rather than silently dropped: a model that needed them would
otherwise serve wrongly. ``auto_capture_config`` is validated by ``capture.py``. Registry lookups stay outside (the API does them),
so this module is pure and unit tested with plain dicts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.endpoints.capture import parse_capture
from supervisor.endpoints.errors import ConfigError
from supervisor.registry import RegistryModel, RegistryVersion

__all__ = ["ConfigError", "Entity", "parse_config"]

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
MAX_ENTITIES = 15
STAGES = {"staging": "Staging", "production": "Production"}
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Entity:
    """One served entity: a registry model and a version reference (a number, ``@alias`` or a stage)."""

    name: str
    model: str
    ref: str
    percentage: int


def check_name(name: Any, what: str = "Endpoint name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"{what} must be 1 to 63 characters of letters, digits, '-' and '_'; got {name!r}"[:300])
    return name


def version_ref(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("Every served entity needs an entity_version (a version number, '@alias' or a stage)")
    value = value.strip()
    if value.isdigit():
        return str(int(value))
    if value.startswith("@") and len(value) > 1:
        return value
    if value.lower() in STAGES:
        return STAGES[value.lower()]
    raise ConfigError(f"entity_version {value!r} is not a version number, '@alias', 'Staging' or 'Production'")


def default_entity_name(model: str, ref: str) -> str:
    # Databricks' default is "<model>-<version>"; a model name with other characters is folded.
    base = _NOT_NAME_CHAR.sub("_", model).strip("_") or "model"
    return f"{base}-{_NOT_NAME_CHAR.sub('', ref)}"[-63:].lstrip("-_") or "entity"


_REFUSED_ENTITY_KEYS = ("external_model", "foundation_model", "instance_profile_arn")


def _entity(raw: Any, legacy_keys: bool) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError("Every served entity must be a JSON object")
    model_key, version_key = ("model_name", "model_version") if legacy_keys else ("entity_name", "entity_version")
    model = raw.get(model_key)
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"Every served entity needs a {model_key} (a registered model)")
    ref = version_ref(raw.get(version_key))
    for key in _REFUSED_ENTITY_KEYS:
        if raw.get(key):
            raise ConfigError(f"'{key}' is not supported: this server serves registered MLflow models only")
    if raw.get("environment_vars"):
        raise ConfigError("'environment_vars' is not supported: a served model gets no extra environment")
    name = raw.get("name")
    name = check_name(name, "A served entity's name") if name not in (None, "") else default_entity_name(model, ref)
    scale = raw.get("scale_to_zero_enabled", False)
    if not isinstance(scale, bool):
        raise ConfigError("scale_to_zero_enabled must be true or false")
    size, kind = raw.get("workload_size", "Small"), raw.get("workload_type", "CPU")
    if not isinstance(size, str) or not isinstance(kind, str):
        raise ConfigError("workload_size and workload_type must be strings")
    return {"name": name, "entity_name": model, "entity_version": ref, "workload_size": size or "Small",
            "workload_type": kind or "CPU", "scale_to_zero_enabled": scale}


def _percentage(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ConfigError(f"traffic_percentage must be an integer from 0 to 100; got {value!r}"[:200])
    return value


def _routes(raw: Any, names: list[str]) -> list[dict[str, Any]]:
    if raw in (None, {}) or (isinstance(raw, dict) and not raw.get("routes")):
        if len(names) == 1:
            return [{"served_model_name": names[0], "traffic_percentage": 100}]
        raise ConfigError("traffic_config.routes is required when an endpoint serves more than one entity")
    routes = raw.get("routes") if isinstance(raw, dict) else None
    if not isinstance(routes, list):
        raise ConfigError("traffic_config must be an object with a list 'routes'")
    out: dict[str, int] = {}
    for route in routes:
        if not isinstance(route, dict):
            raise ConfigError("Every route must be a JSON object")
        name = route.get("served_model_name", route.get("served_entity_name"))
        if name not in names:
            raise ConfigError(f"Route {name!r} names no served entity of this config"[:200])
        if name in out:
            raise ConfigError(f"Two routes name the served entity {name!r}")
        out[name] = _percentage(route.get("traffic_percentage"))
    if sum(out.values()) != 100:
        raise ConfigError(f"The traffic percentages of the routes must sum to 100; they sum to {sum(out.values())}")
    return [{"served_model_name": n, "traffic_percentage": out.get(n, 0)} for n in names]


def parse_config(body: Any, endpoint_name: str) -> dict[str, Any]:
    """The validated config: ``served_entities`` (normalised) and ``traffic_config.routes`` (one per
    entity, in entity order). Raises ConfigError."""
    if not isinstance(body, dict):
        raise ConfigError("'config' must be a JSON object")
    if body.get("name") not in (None, endpoint_name):
        raise ConfigError(f"config.name {body.get('name')!r} differs from the endpoint's name {endpoint_name!r}"[:300])
    capture = parse_capture(body.get("auto_capture_config"), endpoint_name)
    entities_raw, models_raw = body.get("served_entities"), body.get("served_models")
    if entities_raw and models_raw:
        raise ConfigError("Give served_entities or served_models, not both")
    raw = entities_raw or models_raw
    if not isinstance(raw, list) or not raw:
        raise ConfigError("A config needs at least one served entity (served_entities)")
    if len(raw) > MAX_ENTITIES:
        raise ConfigError(f"served_entities cannot contain more than {MAX_ENTITIES} elements")
    entities = [_entity(e, legacy_keys=not entities_raw) for e in raw]
    names = [e["name"] for e in entities]
    if len(set(names)) != len(names):
        raise ConfigError("The names of an endpoint's served entities must be unique")
    pairs = [(e["entity_name"], e["entity_version"]) for e in entities]
    if len(set(pairs)) != len(pairs):
        raise ConfigError("Cannot create 2+ served entities with the same model and version")
    out = {"served_entities": entities, "traffic_config": {"routes": _routes(body.get("traffic_config"), names)}}
    if capture is not None:
        out["auto_capture_config"] = capture
    return out


def entities(config: dict[str, Any]) -> tuple[Entity, ...]:
    share = {r["served_model_name"]: int(r["traffic_percentage"]) for r in config["traffic_config"]["routes"]}
    return tuple(Entity(e["name"], e["entity_name"], e["entity_version"], share.get(e["name"], 0))
                 for e in config["served_entities"])


def resolve(rm: RegistryModel | None, ref: str) -> RegistryVersion | None:
    """The registry version a reference names now, or None: a number names itself (any stage: an
    endpoint serves exactly what it lists, archived or not), ``@alias`` the version the alias
    points at, a stage the newest registered version in it (as the legacy stage URIs do)."""
    if rm is None:
        return None
    registered = [v for v in rm.versions if v.status == "READY"]
    if ref.startswith("@"):
        return next((v for v in registered if ref[1:] in v.aliases), None)
    if ref in STAGES.values():
        in_stage = [v for v in registered if v.stage == ref]
        return max(in_stage, key=lambda v: int(v.version) if v.version.isdigit() else -1) if in_stage else None
    return next((v for v in registered if v.version == ref), None)


def missing_reason(rm: RegistryModel | None, model: str, ref: str) -> str:
    if rm is None:
        return f"Registered model '{model}' does not exist"
    return f"Registered model '{model}' has no version {ref!r}" if not ref.startswith("@") and ref not in \
        STAGES.values() else f"No version of registered model '{model}' is at {ref!r}"


def tags_after(tags: Sequence[dict[str, str]], add: Any, remove: Any) -> list[dict[str, str]]:
    """The tag list after a PATCH .../tags (added keys replace existing ones)."""
    if add is None:
        add = []
    if remove is None:
        remove = []
    if not isinstance(add, list) or not all(isinstance(t, dict) and isinstance(t.get("key"), str) and t["key"]
                                            for t in add):
        raise ConfigError("add_tags must be a list of {\"key\": ..., \"value\": ...}")
    if not isinstance(remove, list) or not all(isinstance(k, str) for k in remove):
        raise ConfigError("delete_tags must be a list of keys")
    out = {t["key"]: t.get("value", "") for t in tags}
    for t in add:
        value = t.get("value", "")
        if not isinstance(value, str):
            raise ConfigError("A tag's value must be a string")
        out[t["key"]] = value
    for key in remove:
        out.pop(key, None)
    return [{"key": k, "value": v} for k, v in out.items()]
