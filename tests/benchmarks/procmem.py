"""Resident memory of a server: the process and all its descendants, RSS and PSS.

RSS counts pages shared between pre-forked workers once per process, so it overstates a forked
server; PSS splits each shared page between the processes that map it, so the PSS of a process
tree is what serving one version really costs the machine. Both are printed.
"""

from __future__ import annotations

from pathlib import Path


def descendants(pid: int) -> list[int]:
    out, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += children
            todo += children
    return out


def _rollup(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return values
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("Rss:", "Pss:"):
            values[parts[0][:-1]] = int(parts[1]) * 1024
    return values


def tree_memory(pid: int) -> tuple[int, int, int]:
    """(processes, RSS bytes, PSS bytes) summed over ``pid`` and its descendants."""
    pids = descendants(pid)
    rss = pss = 0
    for p in pids:
        r = _rollup(p)
        rss += r.get("Rss", 0)
        pss += r.get("Pss", 0)
    return len(pids), rss, pss
