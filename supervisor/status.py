"""The read model of serving: endpoint, version and alias status as the legacy API shapes them.

Computed on demand from the store (deployments, events) and the runtime (is the host alive), so
the API holds no state of its own and every API worker answers the same thing.
"""

from __future__ import annotations

from typing import Any

from supervisor.plan import alias_targets, endpoint_state, stage_targets
from supervisor.runtime.base import Runtime
from supervisor.store import Deployment, Store

REGISTRY_ERROR_KEY = "registry_error"


def registry_error(store: Store) -> str | None:
    raw = store.get_meta(REGISTRY_ERROR_KEY)
    return raw.split(" ", 1)[1] if raw and " " in raw else raw


def endpoint_status(store: Store, runtime: Runtime, model: str) -> dict[str, Any]:
    deps = store.deployments(model)
    host = runtime.host_state(model)
    state, message = endpoint_state(deps, host_alive=bool(host and host.alive))
    reg = registry_error(store)
    if reg:
        message = (message + "; " if message else "") + f"model registry unreachable: {reg}"
    out: dict[str, Any] = {
        "registered_model_name": model,
        "state": state,
        "actual_cluster_config": {
            "node_type_id": runtime.name,
            "tags": [{"key": "cluster_name", "value": f"modelserve-model-{model}"}],
        },
        "serving_version": "V1",
    }
    if message:
        out["state_message"] = message
    if host is not None and host.replicas:
        # A replicating runtime's tasks per version: where each runs and in what state.
        out["replicas"] = [{"endpoint_version_name": v, "node": r["node"], "state": r["state"]}
                           for v, found in sorted(host.replicas.items()) for r in found]
    return out


def version_status(d: Deployment) -> dict[str, Any]:
    out: dict[str, Any] = {
        "registered_model_name": d.model,
        "endpoint_version_name": d.version,
        "state": d.state,
    }
    if d.state_message:
        out["state_message"] = d.state_message
    return out


def version_aliases(store: Store, model: str) -> list[dict[str, str]]:
    deps = store.deployments(model)
    out = [{"alias": s, "endpoint_version_name": d.version} for s, d in stage_targets(deps).items()]
    out += [{"alias": "@" + a, "endpoint_version_name": d.version} for a, d in sorted(alias_targets(deps).items())]
    return out
