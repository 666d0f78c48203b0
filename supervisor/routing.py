"""Route table -> Nginx routes config, as a pure function (no I/O; ``gateway.py`` applies it).

Every scoring URL is one exact-match key of a ``map $uri`` block. ``$uri`` is Nginx's decoded
and normalised path, so ``/model/my%20model/1/invocations`` matches the key for ``my model``,
and a percent-encoded or double-slashed path can only ever select the route its decoded form
names, never another model's. Model names are user input: they appear only inside double-quoted
map keys with ``\\`` and ``"`` escaped, and names that cannot be quoted safely (control
characters) are refused, never rendered. Upstream names are hashes (``naming.upstream_name``).

Each version also has the Open Inference Protocol's (V2) paths, ``/v2/models/<name>/versions/<v>``
(metadata), ``.../ready`` and ``.../infer``, for the same segments (version, stage, ``@alias``), in
the same map and so to the same upstream; a third map gives the version a V2 path resolves to
(``$ms_version``), which the scoring server names in its V2 answers.

A second map gives, for the same keys, the model's name percent-encoded (``$ms_model``): the
gateway hands it to the access check, so the permission checked is always that of the model
whose route the decoded path selects, and any name fits safely into a header.

Serving endpoints get maps of their own, chained: the path picks a choice (an entity's id, or for
the endpoint's own URL a ``split_clients`` variable that draws one per request from
``$request_id``, i.e. at random with the configured weights), and the choice gives the upstream
and the entity's name for the ``served-model-name`` header. An entity leads to the very upstream
its version has for the legacy URIs: one scoring server, however many routes lead to it.

An endpoint with an inference table (``capture``) gets a sampling draw of its own, a
``split_clients`` on ``"${request_id}c"`` (independent of the traffic split's draw), mapped from
the endpoint's name to ``$ms_capture``; ``nginx.conf.j2`` turns a drawn request into the
``X-Modelserve-Capture`` header and a line of the capture log (``supervisor/capture/``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote as url_quote

import jinja2

from supervisor.naming import upstream_name, url_digest

PENDING_TARGET = "pending"


@dataclass(frozen=True)
class VersionRoute:
    version: str
    state: Literal["ready", "pending"]
    address: str | None  # the upstream's Nginx server address when ready (``unix:/...``)


@dataclass(frozen=True)
class ModelRoutes:
    name: str
    versions: tuple[VersionRoute, ...]
    stages: tuple[tuple[str, str], ...] = ()  # (stage, version)
    aliases: tuple[tuple[str, str], ...] = ()  # (alias, version)
    legacy: bool = True  # False: only endpoints serve it (upstreams, no /model/ URIs)


@dataclass(frozen=True)
class EntityRoute:
    name: str
    target: tuple[str, str] | None  # (model, version) when that version is ready, else None (503)
    percentage: int


@dataclass(frozen=True)
class EndpointRoutes:
    name: str
    entities: tuple[EntityRoute, ...]
    pending: bool = False  # no config serving yet, the first one is rolling out: 503 + Retry-After
    capture: float | None = None  # inference table on: the fraction of requests sampled


@dataclass(frozen=True)
class Upstream:
    name: str
    server: str  # one Nginx server address, or several separated by spaces (replicas)

    @property
    def servers(self) -> list[str]:
        return self.server.split()


@dataclass(frozen=True)
class RenderedRoutes:
    text: str
    rejected: list[str] = field(default_factory=list)


def routable(name: str) -> bool:
    """A name can be routed when it has no control characters (they cannot be quoted safely)."""
    return bool(name) and not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)


def quote(value: str) -> str:
    """An Nginx double-quoted string holding exactly ``value``."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# The Open Inference Protocol's (V2) paths of a version: infer, metadata, ready.
V2_OPERATIONS = ("/infer", "", "/ready")


def _keys(model: str, segment: str) -> list[str]:
    return [f"/model/{model}/{segment}/invocations",
            *(f"/v2/models/{model}/versions/{segment}{op}" for op in V2_OPERATIONS)]


def _entries(m: ModelRoutes) -> tuple[list[tuple[str, str, str]], list[Upstream]]:
    """The model's URI keys with their upstream and version (none without legacy serving), and
    its versions' upstreams."""
    target: dict[str, str] = {}
    upstreams: list[Upstream] = []
    for v in m.versions:
        if v.state == "ready" and v.address is not None:
            up = upstream_name(m.name, v.version)
            upstreams.append(Upstream(up, v.address))
            target[v.version] = up
        else:
            target[v.version] = PENDING_TARGET
    entries: list[tuple[str, str, str]] = []
    if not m.legacy:
        return entries, upstreams
    for version, tgt in target.items():
        entries += [(k, tgt, version) for k in _keys(m.name, version)]
    for stage, version in m.stages:
        if version in target:
            entries += [(k, target[version], version) for k in _keys(m.name, stage)]
    for alias, version in m.aliases:
        if version in target:
            entries += [(k, target[version], version) for k in _keys(m.name, "@" + alias)]
    return entries, upstreams


@functools.lru_cache(maxsize=4)
def _template(templates_dir: Path) -> jinja2.Template:
    # Rendered on every reconcile tick: load and compile the template once.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir)), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("routes.conf.j2")


@dataclass(frozen=True)
class _EndpointMaps:
    choice: list[tuple[str, str]] = field(default_factory=list)  # path -> choice (quoted, or a $variable)
    endpoint: list[tuple[str, str]] = field(default_factory=list)  # path -> endpoint name
    target: list[tuple[str, str]] = field(default_factory=list)  # choice -> upstream or "pending"
    entity: list[tuple[str, str]] = field(default_factory=list)  # choice -> entity name (the header)
    splits: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)  # var -> (share, choice)
    capture: list[tuple[str, str]] = field(default_factory=list)  # endpoint -> "1" or its draw's $variable
    fraction: list[tuple[str, str]] = field(default_factory=list)  # endpoint -> its fraction (logged)
    capture_draws: list[tuple[str, str]] = field(default_factory=list)  # $variable -> its percentage


def _endpoint_maps(endpoints: Sequence[EndpointRoutes]) -> _EndpointMaps:
    out = _EndpointMaps()
    seen: set[str] = set()
    for ep in sorted(endpoints, key=lambda e: e.name):
        # Map keys compare case-insensitively; the API refuses names equal but for case, and this
        # keeps a config Nginx accepts whatever the store holds.
        if ep.name.casefold() in seen or not routable(ep.name):
            continue
        seen.add(ep.name.casefold())
        base = f"/serving-endpoints/{ep.name}"
        choices: list[tuple[str, int]] = []
        for e in ep.entities:
            choice = "e_" + url_digest(ep.name, e.name)
            key = f"{base}/served-models/{e.name}/invocations"
            out.choice.append((quote(key), quote(choice)))
            out.endpoint.append((quote(key), quote(ep.name)))
            out.target.append((quote(choice), quote(upstream_name(*e.target) if e.target else PENDING_TARGET)))
            out.entity.append((quote(choice), quote(e.name)))
            if e.percentage > 0:
                choices.append((choice, e.percentage))
        key = f"{base}/invocations"
        out.endpoint.append((quote(key), quote(ep.name)))
        if len(choices) > 1:
            var = "$ms_split_" + url_digest(ep.name, "")
            shares = [(f"{p}%", quote(c)) for c, p in choices[:-1]] + [("*", quote(choices[-1][0]))]
            out.splits.append((var, shares))
            out.choice.append((quote(key), var))
        elif choices:
            out.choice.append((quote(key), quote(choices[0][0])))
        elif ep.pending:
            out.choice.append((quote(key), quote(PENDING_TARGET)))
        if ep.capture is not None:
            _capture(out, ep.name, ep.capture)
    return out


def capture_percentage(fraction: float) -> str:
    """``split_clients`` takes at most two decimals of a percent: the fraction as one, never 0."""
    return f"{max(0.01, round(fraction * 100, 2)):.2f}%"


def _capture(out: _EndpointMaps, name: str, fraction: float) -> None:
    # The draw hashes "${request_id}c", not the traffic split's "${request_id}": the two are independent.
    if fraction >= 1:
        out.capture.append((quote(name), quote("1")))
    else:
        var = "$ms_capture_" + url_digest(name, "capture")
        out.capture_draws.append((var, capture_percentage(fraction)))
        out.capture.append((quote(name), var))
    out.fraction.append((quote(name), quote(repr(float(fraction)))))


def render_routes(models: Sequence[ModelRoutes], templates_dir: Path,
                  endpoints: Sequence[EndpointRoutes] = ()) -> RenderedRoutes:
    rejected = [m.name for m in models if not routable(m.name)]
    unique: list[tuple[str, str, str, str]] = []
    upstreams: list[Upstream] = []
    # Nginx compares map keys case-insensitively (so /Production/ and /production/ both work),
    # and refuses a config with two keys that differ only in case. Two models whose names differ
    # only in case therefore cannot both be routed: the first (in name order) keeps its routes.
    owner: dict[str, str] = {}
    for m in sorted(models, key=lambda m: m.name):
        if not routable(m.name):
            continue
        entries, ups = _entries(m)
        if any(owner.get(k.casefold(), m.name) != m.name for k, _, _ in entries):
            rejected.append(m.name)
            continue
        for key, tgt, version in entries:
            if key.casefold() not in owner:
                owner[key.casefold()] = m.name
                unique.append((key, tgt, url_quote(m.name, safe=""), version))
        upstreams += ups
    text = _template(templates_dir).render(
        entries=[(quote(k), quote(t)) for k, t, _, _ in unique],
        models=[(quote(k), quote(n)) for k, _, n, _ in unique], upstreams=upstreams,
        versions=[(quote(k), quote(v)) for k, _, _, v in unique if k.startswith("/v2/")],
        ep=_endpoint_maps(endpoints), pending=quote(PENDING_TARGET),
    )
    return RenderedRoutes(text=text, rejected=rejected)
