"""Scale to zero, the plan's part: which versions go to sleep and which wake, without any I/O.

A version sleeps only when every use of it allows it: it is READY, legacy serving does not serve
it (or its model's MANAGE setting lets it sleep), and every served entity (of any endpoint's serving or pending config) that leads to it has
``scale_to_zero_enabled``; and no request reached it for ``idle_seconds`` since it last became
ready (or since the reconciler started: activity is not remembered across restarts). Asleep, it
keeps its environment, files and port; the gateway answers its entities 503 with Retry-After,
which both Databricks clients wait out and retry. It wakes when one of its entities was asked
for, or when a use that does not allow sleeping appears. Waking is a state change the reconciler
makes once per tick, so however many requests arrive together, one scoring server starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from supervisor.plan import entity_deployment
from supervisor.store import ASLEEP, READY, Deployment, ServingEndpoint


@dataclass(frozen=True)
class IdleChanges:
    sleep: tuple[tuple[str, str], ...] = ()
    wake: tuple[tuple[str, str], ...] = ()


def _uses(endpoints: Sequence[ServingEndpoint], deps: Mapping[str, Sequence[Deployment]]
          ) -> dict[tuple[str, str], list[tuple[str, str, bool]]]:
    """(model, version) -> the entities leading to it: (endpoint, entity, scale_to_zero_enabled)."""
    out: dict[tuple[str, str], list[tuple[str, str, bool]]] = {}
    for ep in endpoints:
        for cfg in ep.configs():
            for e in cfg["served_entities"]:
                d = entity_deployment(deps.get(e["entity_name"], ()), e["entity_version"])
                if d is not None:
                    out.setdefault((d.model, d.version), []).append(
                        (ep.name, e["name"], bool(e.get("scale_to_zero_enabled"))))
    return out


def idle_changes(deps: Mapping[str, Sequence[Deployment]], endpoints: Sequence[ServingEndpoint],
                 legacy: Iterable[str], last_seen: Mapping[tuple[str, str], float],
                 awake_since: Mapping[tuple[str, str], float], asked: Iterable[tuple[str, str]],
                 now: float, idle_seconds: float, legacy_scalable: Iterable[str] = (),
                 asleep_since: Mapping[tuple[str, str], float] | None = None) -> IdleChanges:
    """``legacy``: models legacy serving serves, of which ``legacy_scalable`` may sleep (a MANAGE
    setting); a request to a sleeping legacy version is seen as a request to it (``last_seen``
    after ``asleep_since``), an endpoint's as its entity being ``asked`` for."""
    legacy_models, asked_for, scalable = set(legacy), set(asked), set(legacy_scalable)
    slept = asleep_since or {}
    uses = _uses(endpoints, deps)
    sleep: list[tuple[str, str]] = []
    wake: list[tuple[str, str]] = []
    for model in sorted(deps):
        for d in deps[model]:
            key = (model, d.version)
            entities = uses.get(key, [])
            if model in legacy_models:
                entities = [*entities, ("", "", model in scalable)]
            may_sleep = bool(entities) and all(s for _, _, s in entities)
            if d.state == READY and d.port and may_sleep:
                active = max(last_seen.get(key, 0.0), awake_since.get(key, now))
                if now - active >= idle_seconds:
                    sleep.append(key)
            elif d.state == ASLEEP and (not may_sleep or any((ep, e) in asked_for for ep, e, _ in entities)
                                        or (model in legacy_models and last_seen.get(key, 0.0) > slept.get(key, 0.0))):
                wake.append(key)
    return IdleChanges(tuple(sleep), tuple(wake))
