"""A model host's status record, read back as untrusted input.

The host writes ``status.json`` for the supervisor, but the model's code runs as the same user in
the same box and may rewrite it. So the record is taken apart field by field: only versions the
supervisor asked that host to run are reported, every value must have its type and a sane size,
and anything else reads as "not known". A model that rewrites its own status can then at worst
misreport itself, never another model, never crash the reconciler, never name a route.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from supervisor.runtime.base import VersionProcess

STATES = {"running", "backoff", "stopped"}
MAX_TEXT = 300
MAX_COUNT = 1_000_000


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT else 0


def _pid(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 < value < 1 << 22 else None


def _text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def versions_of(record: dict[str, Any] | None, wanted: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The record's entries for the ``wanted`` versions, each with checked fields only."""
    raw = (record or {}).get("versions")
    if not isinstance(raw, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for version in wanted:
        v = raw.get(version)
        if not isinstance(v, dict):
            continue
        state = v.get("state")
        out[version] = {
            "state": state if isinstance(state, str) and state in STATES else "stopped",
            "pid": _pid(v.get("pid")),
            "restarts": _count(v.get("restarts")),
            "last_exit": _text(v.get("last_exit")),
            "answering": v.get("answering") is True,
            "workers": _count(v.get("workers")),
            "old_groups": [g for g in (v.get("old_groups") or []) if _pid(g)][:64]
            if isinstance(v.get("old_groups"), list) else [],
        }
    return out


def processes(entries: dict[str, dict[str, Any]], running: Any = None) -> dict[str, VersionProcess]:
    """VersionProcess per version; ``running(entry)`` decides "running" (default: the host's word)."""
    judge = running or (lambda e: e["state"] == "running")
    return {
        version: VersionProcess(version=version, running=bool(judge(e)), pid=e["pid"], restarts=e["restarts"],
                                last_exit=e["last_exit"])
        for version, e in entries.items()
    }


def updated_at(record: dict[str, Any] | None) -> float | None:
    value = (record or {}).get("updated")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
