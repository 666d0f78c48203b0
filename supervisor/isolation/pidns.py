"""Seeing a box's processes from outside: its pids are those of its own PID namespace.

The model host reports pids as it sees them (the keeper is 2 in there, say); the supervisor and
the tests see other numbers for the same processes. Linux lists both in ``/proc/<pid>/status``
(``NSpid``: the outermost first, the box's own last), so walking the box's process tree from
its first process (whose pid the supervisor got from ``Popen``) maps one to the other. Nothing
the box wrote is needed, or trusted, for that.
"""

from __future__ import annotations

from pathlib import Path

PROC = Path("/proc")


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def descendants(pid: int, limit: int = 100_000) -> list[int]:
    """Every process below ``pid``, breadth first (bounded: a fork bomb cannot make this endless)."""
    found: list[int] = []
    queue = children(pid)
    seen: set[int] = set()
    while queue and len(found) < limit:
        p = queue.pop(0)
        if p in seen:
            continue
        seen.add(p)
        found.append(p)
        queue += children(p)
    return found


def inner_pid(pid: int) -> int | None:
    """``pid``'s number in its innermost PID namespace."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def outside_pids(box_pid: int) -> dict[int, int]:
    """The box's own pid -> the pid here, for every process of the box started at ``box_pid``."""
    out: dict[int, int] = {}
    for pid in descendants(box_pid):
        inner = inner_pid(pid)
        if inner is not None and inner != pid:
            out.setdefault(inner, pid)
    return out
