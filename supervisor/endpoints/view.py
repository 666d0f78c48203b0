"""An endpoint as the Databricks clients read it (``ServingEndpointDetailed`` and the list item).

Entity and readiness states are not stored: they are worked out on every read from the
deployments the reconciler keeps, through the same version lookup the gateway routes by
(``plan.entity_deployment``), so what a client reads is what the gateway does. Enum strings are
exactly the clients' (their waiters map any other spelling to None and spin until timeout).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from supervisor.endpoints.capture import capture_json
from supervisor.plan import entity_deployment
from supervisor.store import ASLEEP, FAILED, READY, Deployment, ServingEndpoint

DeploymentsByModel = Mapping[str, Sequence[Deployment]]


def entity_state(e: dict[str, Any], deps: DeploymentsByModel) -> dict[str, str]:
    d = entity_deployment(deps.get(e["entity_name"], ()), e["entity_version"])
    if d is not None and d.state == READY and d.port:
        return {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""}
    if d is not None and d.state == ASLEEP:
        return {"deployment": "DEPLOYMENT_READY", "deployment_state_message": d.state_message or "Scaled to zero"}
    if d is not None and d.state == FAILED:
        return {"deployment": "DEPLOYMENT_FAILED", "deployment_state_message": d.state_message}
    message = d.state_message if d is not None else "Waiting for the reconciler"
    return {"deployment": "DEPLOYMENT_CREATING", "deployment_state_message": message}


def config_json(cfg: dict[str, Any], version: int | None, deps: DeploymentsByModel) -> dict[str, Any]:
    served = [{**e, "state": entity_state(e, deps)} for e in cfg["served_entities"]]
    # Both forms, as Databricks answers (Terraform's fixtures read either).
    models = [{"name": e["name"], "model_name": e["entity_name"], "model_version": e["entity_version"],
               "workload_size": e["workload_size"], "workload_type": e["workload_type"],
               "scale_to_zero_enabled": e["scale_to_zero_enabled"], "state": e["state"],
               **({"creator": e["creator"], "creation_timestamp": e["creation_timestamp"]} if "creator" in e else {})}
              for e in served]
    out = {"served_entities": served, "served_models": models, "traffic_config": cfg["traffic_config"],
           "config_version": version}
    if cfg.get("auto_capture_config") is not None:
        out["auto_capture_config"] = capture_json(cfg["auto_capture_config"])
    return out


def ready(ep: ServingEndpoint, deps: DeploymentsByModel) -> bool:
    """READY iff every entity of the config serving now is ready (none yet: not ready)."""
    return ep.config is not None and all(
        entity_state(e, deps)["deployment"] == "DEPLOYMENT_READY" for e in ep.config["served_entities"])


def state_json(ep: ServingEndpoint, deps: DeploymentsByModel) -> dict[str, str]:
    return {"ready": "READY" if ready(ep, deps) else "NOT_READY", "config_update": ep.config_update}


def detailed(ep: ServingEndpoint, deps: DeploymentsByModel, level: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": ep.name, "id": ep.id, "creator": ep.creator, "creation_timestamp": ep.created,
        "last_updated_timestamp": ep.updated, "state": state_json(ep, deps), "tags": ep.tags,
        "permission_level": level, "route_optimized": ep.route_optimized, "endpoint_type": "CUSTOM_MODEL",
    }
    if ep.config is not None:
        out["config"] = config_json(ep.config, ep.config_version, deps)
    if ep.pending_config is not None:
        out["pending_config"] = {**config_json(ep.pending_config, ep.pending_version, deps),
                                 "start_time": ep.pending_start}
    return out


def summary(ep: ServingEndpoint, deps: DeploymentsByModel) -> dict[str, Any]:
    cfg = ep.config or ep.pending_config or {"served_entities": []}
    return {
        "name": ep.name, "id": ep.id, "creator": ep.creator, "creation_timestamp": ep.created,
        "last_updated_timestamp": ep.updated, "state": state_json(ep, deps), "tags": ep.tags,
        "config": {
            "served_entities": [{"name": e["name"], "entity_name": e["entity_name"],
                                 "entity_version": e["entity_version"]} for e in cfg["served_entities"]],
            "served_models": [{"name": e["name"], "model_name": e["entity_name"],
                               "model_version": e["entity_version"]} for e in cfg["served_entities"]],
        },
    }


def find_entity(ep: ServingEndpoint, name: str) -> tuple[dict[str, Any], bool] | None:
    """An entity of the endpoint's serving, pending or last failed config, and whether it is from
    the failed one (whose reason then heads its build log)."""
    for cfg, failed in ((ep.config, False), (ep.pending_config, False), (ep.failed_config, True)):
        for e in (cfg or {}).get("served_entities", ()):
            if e["name"] == name:
                return e, failed
    return None



# --- the endpoint's page (supervisor/api/pages.py) -----------------------------------------
PAGE_LABELS = {"DEPLOYMENT_READY": "Ready", "DEPLOYMENT_FAILED": "Failed", "DEPLOYMENT_CREATING": "Pending"}


@dataclass
class EntityView:
    name: str
    model: str
    ref: str  # as configured: a number, @alias or a stage
    version: str  # the version it runs now ("" while unknown)
    percentage: int
    label: str  # Ready | Pending | Failed
    message: str
    uri: str


@dataclass
class ConfigView:
    title: str
    version: int | None
    serving: bool
    entities: list[EntityView] = field(default_factory=list)


@dataclass
class PageView:
    uri: str
    ready: str
    update: str
    ready_label: str
    update_label: str
    failure: str
    configs: list[ConfigView]
    first_model: str
    versions: list[tuple[str, str]]  # (model, version) of every entity, for their events


def page_view(ep: ServingEndpoint, deps: DeploymentsByModel) -> PageView:
    state = state_json(ep, deps)
    configs = []
    for title, cfg, version, serving in (("Serving", ep.config, ep.config_version, True),
                                         ("Rolling out", ep.pending_config, ep.pending_version, False)):
        if cfg is None:
            continue
        share = {r["served_model_name"]: int(r["traffic_percentage"]) for r in cfg["traffic_config"]["routes"]}
        view = ConfigView(title, version, serving)
        for e in cfg["served_entities"]:
            d = entity_deployment(deps.get(e["entity_name"], ()), e["entity_version"])
            st = entity_state(e, deps)
            view.entities.append(EntityView(
                e["name"], e["entity_name"], e["entity_version"], d.version if d else "", share.get(e["name"], 0),
                PAGE_LABELS[st["deployment"]], st["deployment_state_message"],
                f"/serving-endpoints/{ep.name}/served-models/{e['name']}/invocations"))
        configs.append(view)
    entities = [e for c in configs for e in c.entities]
    return PageView(
        uri=f"/serving-endpoints/{ep.name}/invocations", ready=state["ready"], update=state["config_update"],
        ready_label="Ready" if state["ready"] == "READY" else "Pending",
        update_label={"IN_PROGRESS": "Pending", "UPDATE_FAILED": "Failed"}.get(state["config_update"], "Ready"),
        failure=ep.update_message if ep.config_update == "UPDATE_FAILED" else "",
        configs=configs, first_model=entities[0].model if entities else "",
        versions=sorted({(e.model, e.version) for e in entities if e.version}))
