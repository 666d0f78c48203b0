"""One row of an inference table, from the gateway's capture line and the version's spool record.

The gateway's line is the authority (``nginx.conf.j2``, ``log_format ms_capture``): it says that
the request was sampled, when it came, what it answered, how long the model took, which endpoint,
entity and upstream it went to, and the request body. The model's side only adds the response
body: carried on the answer itself (a small one, in a header the gateway logs on that line), or
a spool record written inside the model's box, used only when its request id matches a line
routed to that very upstream (``join``): a model can neither create rows nor attribute them
elsewhere.
Pure functions; unit tested.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from supervisor.capture.spool import REQUEST_ID, SpoolRecord
from supervisor.scoring.spool import INLINE_MAX, MAX_BODY

MAX_CLIENT_REQUEST_ID = 256
COLUMNS = ("request_id", "client_request_id", "endpoint", "served_entity", "model", "version", "date",
           "timestamp_ms", "status_code", "execution_time_ms", "sampling_fraction", "request", "request_size",
           "request_truncated", "response", "response_size", "response_truncated")


@dataclass(frozen=True)
class Logged:
    """One line of the gateway's capture log."""

    request_id: str
    end_ms: int  # $msec: when the answer was sent
    status: int
    request_seconds: float  # $request_time
    upstream_seconds: float | None  # $upstream_response_time of the last try ("-": none answered)
    endpoint: str
    entity: str
    target: str  # the upstream the entity maps to ("pending" while it is down)
    content_length: int
    request_body: str
    fraction: float  # the endpoint's sampling fraction when the gateway drew this request
    # The answer's body when the scoring server carried it on the answer itself (small ones):
    # then no spool record is needed; None: look for the record.
    response: SpoolRecord | None = None


def _seconds(value: Any) -> float | None:
    last = str(value).split(",")[-1].split(":")[-1].strip()
    try:
        return float(last)
    except ValueError:
        return None


# The gateway's fields in the order ``log_format ms_capture`` writes them, tab-separated. Nginx's
# escape=json escapes every control character inside a value, so a tab only ever separates: the
# request body, last, is the one field that needs unescaping, and only when it holds a backslash.
FIELDS = 12


def parse_logged(line: str) -> Logged | None:
    """A capture line, or None for anything that is not a well-formed one. The line was a JSON
    object before 2026-12-04, parsed whole for every captured request; that form is still read
    (a log may hold it across an upgrade)."""
    if line.startswith("{"):
        return _parse_json_line(line)
    fields = line.split("\t", FIELDS - 1)
    if len(fields) != FIELDS:
        return None
    rid, end, status, took, upstream, endpoint, entity, target, length, fraction, carried, body = fields
    if not REQUEST_ID.match(rid):
        return None
    try:
        request_body = json.loads(f'"{body}"') if "\\" in body else body
        return Logged(request_id=rid, end_ms=int(float(end) * 1000), status=int(status),
                      request_seconds=float(took), upstream_seconds=_seconds(upstream), endpoint=endpoint,
                      entity=entity, target=target, content_length=int(length) if length.isdigit() else 0,
                      request_body=request_body, fraction=_fraction(fraction), response=_carried(rid, carried))
    except (ValueError, TypeError):
        return None


def _carried(request_id: str, value: str) -> SpoolRecord | None:
    """The answer's body the scoring server sent back in its capture header (base64; "-" or ""
    when it sent none). The model's own word, like a spool record, and bounded by the header
    buffer the gateway allows; one that is not base64 counts as none."""
    if value in ("", "-") or len(value) > 4 * (INLINE_MAX + 2) // 3 + 4:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return SpoolRecord(request_id, len(raw), raw.decode("utf-8", errors="replace"))


def _parse_json_line(line: str) -> Logged | None:
    try:
        raw = json.loads(line)
        rid = str(raw["i"])
        if not REQUEST_ID.match(rid):
            return None
        length = str(raw.get("l", "")).strip()
        return Logged(request_id=rid, end_ms=int(float(raw["t"]) * 1000), status=int(raw["s"]),
                      request_seconds=float(raw["d"]), upstream_seconds=_seconds(raw.get("m", "-")),
                      endpoint=str(raw["e"]), entity=str(raw["n"]), target=str(raw["x"]),
                      content_length=int(length) if length.isdigit() else 0, request_body=str(raw.get("b", "")),
                      fraction=_fraction(raw.get("f")))
    except (ValueError, KeyError, TypeError):
        return None


DAY_MS = 86_400_000
EPOCH = dt.date(1970, 1, 1).toordinal()


@functools.lru_cache(maxsize=64)
def _utc_date(day: int) -> str:
    """The UTC date of a day counted from the epoch (rows of one day share one string)."""
    return dt.date.fromordinal(EPOCH + day).isoformat()


def _fraction(value: Any) -> float:
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        return 1.0
    return fraction if 0 < fraction <= 1 else 1.0


def _client_request_id(body: str | None) -> str | None:
    # Most bodies carry no such key: a substring test spares parsing each of them a second time.
    if not body or "client_request_id" not in body or not body.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(body).get("client_request_id")
    except (ValueError, AttributeError):
        return None
    return value[:MAX_CLIENT_REQUEST_ID] if isinstance(value, str) else None


def row(logged: Logged, record: SpoolRecord | None, model: str, version: str) -> dict[str, Any]:
    """The row of one sampled request; ``record`` None: the model gave no response body (it
    failed, or the gateway answered for it)."""
    size = max(logged.content_length, len(logged.request_body.encode("utf-8")))
    # Nginx keeps a body up to 1 MB in memory, where $request_body sees it; a larger one is not logged.
    request_truncated = size > MAX_BODY or (size > 0 and not logged.request_body)
    request = None if request_truncated else logged.request_body
    start_ms = logged.end_ms - round(logged.request_seconds * 1000)
    return {
        "request_id": logged.request_id,
        "client_request_id": _client_request_id(request),
        "endpoint": logged.endpoint, "served_entity": logged.entity, "model": model, "version": version,
        "date": _utc_date(start_ms // DAY_MS),
        "timestamp_ms": start_ms, "status_code": logged.status,
        "execution_time_ms": None if logged.upstream_seconds is None else round(logged.upstream_seconds * 1000),
        "sampling_fraction": logged.fraction,
        "request": request, "request_size": size, "request_truncated": request_truncated,
        "response": record.body if record else None, "response_size": record.size if record else None,
        "response_truncated": bool(record and record.body is None),
    }


def join(lines: list[Logged], records: Mapping[tuple[str, str], SpoolRecord],
         versions: Mapping[str, tuple[str, str]], endpoint_ids: Mapping[str, str]
         ) -> tuple[list[dict[str, Any]], set[tuple[str, str]]]:
    """Rows for ``lines`` (first line per request id; none for an endpoint deleted since), and
    the (upstream, request id) keys of the records they used. ``records`` is keyed by (upstream,
    request id): the spool of the upstream the gateway routed to, and nothing else, can supply a
    response. ``versions`` maps an upstream to its (model, version), ``endpoint_ids`` an
    endpoint's name to its id (the key its rows are kept and read by)."""
    rows: list[dict[str, Any]] = []
    used: set[tuple[str, str]] = set()
    seen: set[str] = set()
    for logged in lines:
        if logged.request_id in seen or logged.endpoint not in endpoint_ids:
            continue
        seen.add(logged.request_id)
        key = (logged.target, logged.request_id)
        record = records.get(key)
        if record is not None:
            used.add(key)
        if logged.response is not None:  # carried on the answer itself: the gateway saw it there
            record = logged.response
        model, version = versions.get(logged.target, ("", ""))
        rows.append({**row(logged, record, model, version), "endpoint_id": endpoint_ids[logged.endpoint]})
    return rows, used
