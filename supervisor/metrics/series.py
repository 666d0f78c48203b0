"""The request aggregates: counters and latency histograms per route, and a short timeline.

Pure data and arithmetic, no I/O: the collector (in the reconciler) feeds it parsed log lines
and saves it as one JSON document in the store, beside the log offset it has read up to, so
the counts and the offset always agree. Counters are kept for as long as the data dir lives
(Prometheus counters must not go back); the timeline behind the charts and
``get-metric-history`` keeps ``KEEP_MS`` of ``STEP_MS`` buckets per version.

Status 499 is Nginx's word for "the client closed the connection before the answer": nothing
went wrong on our side, so it is counted apart from the errors (its own timeline field and
``RouteStats.client_closed``), never in them, while still being one of the requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from supervisor.metrics.accesslog import Access, Position
from supervisor.plan import STAGES, alias_targets, stage_targets
from supervisor.store import Deployment

# Latency histogram bounds in seconds (Prometheus' usual web-request ladder).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STEP_MS = 10_000
KEEP_MS = 3_600_000

# Nginx's status for a request whose client went away before the answer.
CLIENT_CLOSED = 499

# Timeline point fields. CLIENT_CLOSED_REQUESTS came last, so points saved before it existed
# read as the same fields with a zero appended.
REQUESTS, ERRORS_4XX, ERRORS_5XX, SECONDS_SUM, SECONDS_MAX, CLIENT_CLOSED_REQUESTS = range(6)
POINT_FIELDS = 6


def new_point() -> list[float]:
    return [0, 0, 0, 0.0, 0.0, 0]


@dataclass(frozen=True)
class RouteKey:
    model: str
    version: str  # the version that answered ("" when it cannot be known)
    route: str  # the path segment used: "3", "Production", "@champion"


@dataclass
class RouteStats:
    codes: dict[str, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # last: above every bound
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.buckets)

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.codes.items() if int(code) >= 400 and int(code) != CLIENT_CLOSED)

    @property
    def client_closed(self) -> int:
        return self.codes.get(str(CLIENT_CLOSED), 0)

    def observe(self, status: int, seconds: float) -> None:
        self.codes[str(status)] = self.codes.get(str(status), 0) + 1
        i = next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
        self.buckets[i] += 1
        self.seconds += seconds


def split_uri(uri: str) -> tuple[str, str] | None:
    """``/model/<name>/<segment>/invocations`` or the V2 ``/v2/models/<name>/versions/<segment>/infer``
    -> (name, segment); names may hold slashes."""
    if uri.startswith("/v2/models/") and uri.endswith("/infer"):
        name, sep, segment = uri[len("/v2/models/"):-len("/infer")].rpartition("/versions/")
        return (name, segment) if sep and name and segment and "/" not in segment else None
    if not uri.startswith("/model/") or not uri.endswith("/invocations"):
        return None
    middle = uri[len("/model/"):-len("/invocations")]
    if "/" not in middle:
        return None
    name, segment = middle.rsplit("/", 1)
    return (name, segment) if name and segment else None


def resolve(access: Access, upstreams: Mapping[str, tuple[str, str]],
            deployments: Mapping[str, Sequence[Deployment]]) -> RouteKey | None:
    """Which model, version and route a request went to; None when the gateway had no route.
    A serving endpoint's request counts for the version that answered, under the route
    ``serving-endpoints/<endpoint>/<entity>`` (so its series carry the endpoint and entity)."""
    if access.endpoint:
        if access.target not in upstreams:
            return None  # no config serving yet, or no such entity: nothing answered
        model, version = upstreams[access.target]
        return RouteKey(model, version, f"serving-endpoints/{access.endpoint}/{access.entity}")
    parts = split_uri(access.uri)
    if parts is None or not access.target:
        return None
    name, segment = parts
    stage = next((s for s in STAGES if s.lower() == segment.lower()), None)
    route = stage or segment
    if access.target in upstreams:
        model, version = upstreams[access.target]
        return RouteKey(model, version, route)
    # A pending route (503) or one removed before this line was read: resolve by the store.
    deps = deployments.get(name, ())
    if stage:
        d = stage_targets(deps).get(stage)
        return RouteKey(name, d.version if d else "", route)
    if segment.startswith("@"):
        d = alias_targets(deps).get(segment[1:])
        return RouteKey(name, d.version if d else "", route)
    return RouteKey(name, segment, route)


@dataclass
class MetricsState:
    routes: dict[RouteKey, RouteStats] = field(default_factory=dict)
    timeline: dict[tuple[str, str], dict[int, list[float]]] = field(default_factory=dict)
    unrouted: int = 0
    position: Position = field(default_factory=Position)

    def observe(self, key: RouteKey | None, access: Access) -> None:
        if key is None:
            self.unrouted += 1
            return
        self.routes.setdefault(key, RouteStats()).observe(access.status, access.seconds)
        at = int(access.at * 1000) // STEP_MS * STEP_MS
        point = self.timeline.setdefault((key.model, key.version), {}).setdefault(at, new_point())
        point[REQUESTS] += 1
        if access.status == CLIENT_CLOSED:
            point[CLIENT_CLOSED_REQUESTS] += 1
        elif 400 <= access.status < 500:
            point[ERRORS_4XX] += 1
        elif access.status >= 500:
            point[ERRORS_5XX] += 1
        point[SECONDS_SUM] += access.seconds
        point[SECONDS_MAX] = max(point[SECONDS_MAX], access.seconds)

    def prune(self, now_ms: int) -> None:
        oldest = now_ms - KEEP_MS
        for key in list(self.timeline):
            points = {t: p for t, p in self.timeline[key].items() if t >= oldest}
            if points:
                self.timeline[key] = points
            else:
                del self.timeline[key]

    def to_json(self) -> dict[str, Any]:
        return {
            "routes": [[k.model, k.version, k.route, s.codes, s.buckets, s.seconds] for k, s in self.routes.items()],
            "timeline": [[m, v, {str(t): p for t, p in pts.items()}] for (m, v), pts in self.timeline.items()],
            "unrouted": self.unrouted,
            "position": [self.position.inode, self.position.offset],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> MetricsState:
        state = cls(unrouted=int(raw.get("unrouted", 0)),
                    position=Position(*[int(x) for x in raw.get("position", [0, 0])]))
        for model, version, route, codes, buckets, seconds in raw.get("routes", []):
            if len(buckets) == len(BUCKETS) + 1:  # histograms of another bucket ladder are dropped
                state.routes[RouteKey(model, version, route)] = RouteStats(dict(codes), list(buckets), seconds)
        for model, version, pts in raw.get("timeline", []):
            state.timeline[(model, version)] = {int(t): _padded(p) for t, p in pts.items()}
        return state

    def timeline_of(self, model: str, version: str | None = None) -> dict[int, list[float]]:
        """One model's points (all versions summed, or one version's), by bucket start."""
        out: dict[int, list[float]] = {}
        for (m, v), pts in self.timeline.items():
            if m != model or (version is not None and v != version):
                continue
            for t, p in pts.items():
                acc = out.setdefault(t, new_point())
                for i in (REQUESTS, ERRORS_4XX, ERRORS_5XX, SECONDS_SUM, CLIENT_CLOSED_REQUESTS):
                    acc[i] += p[i]
                acc[SECONDS_MAX] = max(acc[SECONDS_MAX], p[SECONDS_MAX])
        return dict(sorted(out.items()))


def _padded(point: Sequence[float]) -> list[float]:
    """A saved point with the fields added since it was saved, as zeros."""
    return [*point, *new_point()[len(point):]][:POINT_FIELDS]
