"""The reconciler's plan: what to deploy, remove, relabel and stop, computed without any I/O.

Two kinds of desired state meet here and nowhere else: legacy serving (every servable version of
an enabled model) and serving endpoints (the versions their entities name, in the config serving
and the one rolling out). A (model, version) wanted by either is one deployment, so it runs once
however many routes lead to it, and it goes only when neither wants it any more. The plan also
says which endpoint config updates are finished (every entity READY: switch) or failed.

Like docker-compose's convergence planner, the difference between the desired state (enabled
models x non-archived registry versions) and the recorded state (deployments in the store, hosts
the runtime knows) is computed here as plain data and executed elsewhere. That keeps the rules
in one place and testable with hand-made inputs, and lets the executor order its steps for
zero downtime (routes before processes on the way out, processes before routes on the way in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from supervisor.endpoints.config import STAGES as ENTITY_STAGES
from supervisor.endpoints.config import entities, missing_reason, resolve
from supervisor.registry import RegistryModel, RegistryVersion
from supervisor.routing import EndpointRoutes, EntityRoute, ModelRoutes, VersionRoute
from supervisor.store import (
    ASLEEP,
    FAILED,
    LAUNCHING,
    PENDING,
    READY,
    Deployment,
    ServingEndpoint,
    endpoint_models,
)

STAGES = ("Staging", "Production")


@dataclass(frozen=True)
class Relabel:
    model: str
    version: str
    stage: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class EndpointChange:
    """The pending config ``version`` of ``endpoint`` is ready to serve (``promote``) or failed."""

    endpoint: str
    version: int
    promote: bool
    message: str = ""


@dataclass(frozen=True)
class Plan:
    stop: tuple[str, ...] = ()  # models whose host and deployments go entirely
    deploy: tuple[tuple[str, RegistryVersion], ...] = ()  # new versions to build and start
    remove: tuple[tuple[str, str], ...] = ()  # (model, version) archived or deleted
    relabel: tuple[Relabel, ...] = ()  # stage or alias moved
    ensure_host: tuple[str, ...] = ()  # enabled models whose host must exist
    skipped: tuple[str, ...] = field(default=())  # enabled models the registry did not answer for
    endpoint_changes: tuple[EndpointChange, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.stop or self.deploy or self.remove or self.relabel)


def _pinned(endpoints: Sequence[ServingEndpoint],
            registry: Mapping[str, RegistryModel | None]) -> dict[str, dict[str, RegistryVersion]]:
    """model -> the versions endpoints need, resolved against the registry's answer now."""
    out: dict[str, dict[str, RegistryVersion]] = {}
    for ep in endpoints:
        for cfg in ep.configs():
            for e in entities(cfg):
                rv = resolve(registry.get(e.model), e.ref)
                if rv is not None:
                    out.setdefault(e.model, {})[rv.version] = rv
    return out


def _update_outcome(ep: ServingEndpoint, registry: Mapping[str, RegistryModel | None],
                    deployments: Mapping[str, Sequence[Deployment]]) -> EndpointChange | None:
    """Whether the endpoint's pending config is done: None while it is still rolling out (or the
    registry did not answer for one of its models: nothing is decided on no answer)."""
    if ep.pending_config is None or ep.pending_version is None:
        return None
    waiting = False
    for e in entities(ep.pending_config):
        if e.model not in registry:
            return None
        rv = resolve(registry[e.model], e.ref)
        if rv is None:
            return EndpointChange(ep.name, ep.pending_version, False,
                                  f"Served entity '{e.name}': {missing_reason(registry[e.model], e.model, e.ref)}")
        d = next((d for d in deployments.get(e.model, ()) if d.version == rv.version), None)
        if d is not None and d.state == FAILED:
            return EndpointChange(ep.name, ep.pending_version, False,
                                  f"Served entity '{e.name}' ({e.model} version {rv.version}) failed to deploy: "
                                  f"{d.state_message}")
        # A version scaled to zero serves on demand (its first request wakes it): it is ready.
        waiting = waiting or d is None or d.state not in (READY, ASLEEP) or not d.port
    return None if waiting else EndpointChange(ep.name, ep.pending_version, True)


def compute_plan(
    enabled: Iterable[str],
    registry: Mapping[str, RegistryModel | None],
    deployments: Mapping[str, Sequence[Deployment]],
    hosts: Iterable[str],
    in_flight: Iterable[tuple[str, str]] = (),
    endpoints: Sequence[ServingEndpoint] = (),
) -> Plan:
    """``registry`` has an entry for every served model it answered for: a model, or None when
    the registry says the model does not exist (all its versions go). Served models without an
    entry were unreachable: they are left exactly as they are. A model is served when legacy
    serving is enabled for it or an endpoint names it; legacy serving wants every servable
    version, an endpoint the versions its entities resolve to."""
    legacy = set(enabled)
    pinned = _pinned(endpoints, registry)
    enabled_set = legacy | endpoint_models(endpoints)
    busy = set(in_flight)
    stop = sorted((set(hosts) | set(deployments)) - enabled_set)
    deploy: list[tuple[str, RegistryVersion]] = []
    remove: list[tuple[str, str]] = []
    relabel: list[Relabel] = []
    skipped: list[str] = []
    for model in sorted(enabled_set):
        if model not in registry:
            skipped.append(model)
            continue
        rm = registry[model]
        wanted = {v.version: v for v in (rm.servable() if rm and model in legacy else ())}
        wanted.update(pinned.get(model, {}))
        have = {d.version: d for d in deployments.get(model, ())}
        for version, rv in wanted.items():
            d = have.get(version)
            # A deployment left PENDING/LAUNCHING with nobody working on it was cut short by a
            # restart of the reconciler: it is deployed again (every step of a deploy is idempotent).
            unfinished = d is not None and d.state in (PENDING, LAUNCHING)
            if (d is None or unfinished) and (model, version) not in busy:
                deploy.append((model, rv))
            if d is None:
                continue
            if d.stage != rv.stage or tuple(sorted(d.aliases)) != tuple(sorted(rv.aliases)):
                relabel.append(Relabel(model, version, rv.stage, tuple(sorted(rv.aliases))))
        remove.extend((model, version) for version in sorted(have) if version not in wanted)
    ensure = sorted(enabled_set - set(skipped))
    return Plan(
        stop=tuple(stop),
        deploy=tuple(deploy),
        remove=tuple(remove),
        relabel=tuple(relabel),
        ensure_host=tuple(ensure),
        skipped=tuple(skipped),
        endpoint_changes=tuple(c for ep in endpoints if (c := _update_outcome(ep, registry, deployments))),
    )


def _newest(deps: Iterable[Deployment]) -> Deployment | None:
    ordered = sorted(deps, key=lambda d: int(d.version) if d.version.isdigit() else -1)
    return ordered[-1] if ordered else None


def stage_targets(deps: Sequence[Deployment]) -> dict[str, Deployment]:
    """Stage -> the version its URI serves: the newest READY version in that stage, so a stage
    move never sends traffic to a version that cannot answer yet; while none is ready, the newest
    pending one (its URI then answers 503 with Retry-After)."""
    out: dict[str, Deployment] = {}
    for stage in STAGES:
        in_stage = [d for d in deps if d.stage == stage and d.state != FAILED]
        chosen = _newest(d for d in in_stage if d.state == READY) or _newest(in_stage)
        if chosen is not None:
            out[stage] = chosen
    return out


def alias_targets(deps: Sequence[Deployment]) -> dict[str, Deployment]:
    return {alias: d for d in deps if d.state != FAILED for alias in d.aliases}


def entity_deployment(deps: Sequence[Deployment], ref: str) -> Deployment | None:
    """The deployment an entity's version reference leads to now, by the same rules as the
    legacy stage and alias URIs (so an endpoint following ``@champion`` moves when they do)."""
    if ref.startswith("@"):
        return alias_targets(deps).get(ref[1:])
    if ref in ENTITY_STAGES.values():
        return stage_targets(deps).get(ref)
    return next((d for d in deps if d.version == ref), None)


def endpoint_routes(ep: ServingEndpoint, deps: Mapping[str, Sequence[Deployment]],
                    promoted: bool = False) -> EndpointRoutes:
    """The routing table of one endpoint: its serving config (or, ``promoted``, the pending one
    about to replace it), each entity at its version's upstream. No config yet: 503 while the
    first one rolls out, else (it failed) nothing to route."""
    cfg = ep.pending_config if promoted else ep.config
    if cfg is None:
        return EndpointRoutes(ep.name, (), pending=ep.pending_config is not None)
    routes = []
    for e in entities(cfg):
        d = entity_deployment(deps.get(e.model, ()), e.ref)
        ready = d is not None and d.state == READY and bool(d.port)
        routes.append(EntityRoute(e.name, (e.model, d.version) if ready and d else None, e.percentage))
    capture = cfg.get("auto_capture_config") or {}
    # The config serving decides: a pending config's capture starts when that config does.
    fraction = float(capture["sampling_fraction"]) if capture.get("enabled") else None
    return EndpointRoutes(ep.name, tuple(routes), capture=fraction)


def model_routes(
    model: str, deps: Sequence[Deployment], address: Callable[[Deployment], str], legacy: bool = True
) -> ModelRoutes:
    """The routing table of one model from its recorded deployments; without ``legacy`` (only
    endpoints serve it) its versions get upstreams but no /model/ URIs."""
    versions = []
    for d in deps:
        if d.state == READY and d.port:
            versions.append(VersionRoute(d.version, "ready", address(d)))
        elif d.state in (PENDING, LAUNCHING, ASLEEP) or (d.state == READY and not d.port):
            versions.append(VersionRoute(d.version, "pending", None))
    routed = {v.version for v in versions}
    stages = tuple((s, d.version) for s, d in stage_targets(deps).items() if d.version in routed)
    aliases = tuple(sorted((a, d.version) for a, d in alias_targets(deps).items() if d.version in routed))
    return ModelRoutes(name=model, versions=tuple(versions), stages=stages, aliases=aliases, legacy=legacy)


def endpoint_state(deps: Sequence[Deployment], host_alive: bool, host_error: str | None = None) -> tuple[str, str]:
    """ENDPOINT_STATE_* and a message, from the versions' states and the host's liveness."""
    if host_error:
        return "ENDPOINT_STATE_FAILED", host_error
    states = [d.state for d in deps]
    if not host_alive:
        return "ENDPOINT_STATE_PENDING", "Starting the model's serving host"
    if any(s in (PENDING, LAUNCHING) for s in states):
        return "ENDPOINT_STATE_PENDING", "Deploying model versions"
    if states and all(s == FAILED for s in states):
        return "ENDPOINT_STATE_FAILED", "Every model version failed to deploy"
    if not states:
        return "ENDPOINT_STATE_READY", "Serving is enabled; the model has no active version"
    return "ENDPOINT_STATE_READY", ""
