"""Rate limits of a serving endpoint, as both Databricks shapes send them -> one validated form,
and that form -> the gateway's limit zones.

The legacy ``PUT .../rate-limits`` (``{"calls", "key": user|endpoint, "renewal_period"}``) and
the AI Gateway's ``rate_limits`` (the same, plus ``principal`` for one user's own limit) are kept
as one list, so the API, the store and the gateway know a single shape. What cannot be honoured
here is refused, never dropped: token counts (a custom model has no tokens), groups and service
principals (MLflow has neither), periods other than a minute. Unknown fields are refused too, so
a misspelt ``call`` cannot silently leave an endpoint unlimited.

Enforcement is Nginx's ``limit_req`` (a leaky bucket): ``calls`` per minute is a burst of
``calls`` refilled at ``calls``/60 per second, so a caller who used the minute's calls at once
gets one more every 60/``calls`` s, which is what the 429's ``Retry-After`` says. Every limit
that applies to a request counts it; a user's own limit (``principal``) replaces the per-user
default for that user. Pure functions, unit tested with plain dicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.endpoints.config import ConfigError
from supervisor.naming import url_digest
from supervisor.routing import quote

KEYS = ("user", "endpoint")
MAX_LIMITS = 20
MAX_CALLS = 6_000_000  # 100,000 a second: Nginx counts in thousandths of a request per millisecond
_FIELDS = {"calls", "key", "renewal_period", "principal", "tokens"}


def _limit(raw: Any, ai_gateway: bool) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError("Every rate limit must be a JSON object")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ConfigError(f"Unknown field(s) in a rate limit: {', '.join(unknown)}"[:300])
    if raw.get("tokens") is not None:
        raise ConfigError("Token rate limits are not supported: a custom model's requests have no token count")
    calls = raw.get("calls")
    if isinstance(calls, bool) or not isinstance(calls, int) or not 1 <= calls <= MAX_CALLS:
        raise ConfigError(f"A rate limit's calls must be an integer from 1 to {MAX_CALLS}; got {calls!r}"[:200])
    key = raw.get("key", "endpoint")
    if key not in KEYS:
        raise ConfigError(f"A rate limit's key must be 'user' or 'endpoint' (MLflow has no groups or service "
                          f"principals); got {key!r}"[:200])
    period = raw.get("renewal_period", "minute")
    if period != "minute":
        raise ConfigError(f"A rate limit's renewal_period must be 'minute'; got {period!r}"[:200])
    out: dict[str, Any] = {"calls": calls, "key": key, "renewal_period": "minute"}
    principal = raw.get("principal")
    if principal is not None:
        if not ai_gateway:
            raise ConfigError("'principal' belongs to the AI Gateway's rate limits (PUT .../ai-gateway)")
        if key != "user" or not isinstance(principal, str) or not principal.strip() or \
                any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in principal):
            raise ConfigError("'principal' must be a user name, and only with key 'user'")
        out["principal"] = principal
    return out


def parse_rate_limits(raw: Any, ai_gateway: bool = False) -> list[dict[str, Any]]:
    """The validated limits (``[]`` removes them all). Raises ConfigError."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError("rate_limits must be a list")
    if len(raw) > MAX_LIMITS:
        raise ConfigError(f"An endpoint has at most {MAX_LIMITS} rate limits")
    limits = [_limit(r, ai_gateway) for r in raw]
    seen = [(lim["key"], lim.get("principal")) for lim in limits]
    if len(set(seen)) != len(seen):
        raise ConfigError("Two rate limits have the same key (and principal)")
    return limits


def parse_ai_gateway(raw: Any) -> list[dict[str, Any]]:
    """The rate limits of an AI Gateway config; its other parts are refused unless off or empty."""
    if not isinstance(raw, dict):
        raise ConfigError("The AI Gateway config must be a JSON object")
    known = {"rate_limits", "inference_table_config", "usage_tracking_config", "guardrails", "fallback_config"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"Unknown field(s) in the AI Gateway config: {', '.join(unknown)}"[:300])
    for part in sorted(known - {"rate_limits"}):
        value = raw.get(part)
        if value and not (isinstance(value, dict) and set(value) <= {"enabled"} and not value.get("enabled")):
            raise ConfigError(f"'{part}' is not supported by this server (only rate_limits are)")
    return parse_rate_limits(raw.get("rate_limits"), ai_gateway=True)


@dataclass(frozen=True)
class LimitZone:
    """One ``limit_req_zone``: the requests of ``endpoint`` it counts, keyed as its map says."""

    zone: str
    endpoint: str
    calls: int
    key: str  # "endpoint" (one bucket) or "user" (one per principal)
    principal: str | None = None  # key user: this user only
    excluded: tuple[str, ...] = ()  # key user, no principal: users who have a limit of their own

    @property
    def burst(self) -> int:
        return self.calls - 1


def limit_zones(limits: Mapping[str, Sequence[dict[str, Any]]]) -> list[LimitZone]:
    """Endpoint name -> its limits, as the gateway's zones. A zone's name changes with its number
    of calls, so a changed limit starts from a full bucket (and Nginx never rebinds a zone)."""
    zones: list[LimitZone] = []
    for endpoint in sorted(limits):
        own = tuple(sorted(lim["principal"] for lim in limits[endpoint] if lim.get("principal")))
        for lim in limits[endpoint]:
            principal = lim.get("principal")
            name = "ms_rl_" + url_digest(endpoint, f"{lim['key']}|{principal or ''}|{lim['calls']}")
            zones.append(LimitZone(name, endpoint, lim["calls"], lim["key"], principal,
                                   own if lim["key"] == "user" and principal is None else ()))
    return zones


def retry_after(zones: Sequence[LimitZone]) -> dict[str, int]:
    """Endpoint -> the seconds a refused caller waits for a call: the slowest refill among its zones."""
    out: dict[str, int] = {}
    for z in zones:
        out[z.endpoint] = max(out.get(z.endpoint, 1), math.ceil(60 / z.calls))
    return out


def nginx_limits(zones: Sequence[LimitZone]) -> dict[str, Any]:
    """What nginx.conf.j2 renders for ``zones``: per zone, the entries of its map from
    ``"<endpoint>|<principal>"`` to its counting key (empty: not counted), Nginx-quoted; and per
    endpoint the Retry-After of its 429. Endpoint names are [A-Za-z0-9_-] (config.NAME_RE), so
    they go into a regex as they are; user names only into quoted exact keys."""
    out = []
    for z in zones:
        entries: list[tuple[str, str]] = []
        if z.key == "endpoint":
            entries.append((quote(f"~^{z.endpoint}[|]"), quote("e")))
        elif z.principal is not None:
            entries.append((quote(f"{z.endpoint}|{z.principal}"), quote("u")))
        else:
            entries += [(quote(f"{z.endpoint}|{p}"), quote("")) for p in z.excluded]
            # A request without a principal (no access check) is not counted by a per-user limit.
            entries += [(quote(f"{z.endpoint}|"), quote("")), (quote(f"~^{z.endpoint}[|]"), "$ms_principal")]
        out.append({"zone": z.zone, "calls": z.calls, "burst": z.burst, "entries": entries})
    return {"zones": out, "retry": [(quote(ep), str(s)) for ep, s in sorted(retry_after(zones).items())]}
