"""What the churn suite saw: its phases, every request sorted into them, and the verdict.

Kept pure (no I/O, no system) so the rules that decide pass or fail are plain to read and have
unit tests of their own. A request belongs to the phase during which it was SENT; requests sent
between two phases form the phase "between", which must be as clean as any quiet phase.

The rules (issues 7 and 18):
- a "quiet" phase (registration, stage/alias moves, archiving, other models, reloads, supervisor
  restarts, a failing build, a registry outage): no failed request on any per-request target;
- a "fault" phase (SIGKILL of one process on the serving path: a scoring worker, a version's
  server, a model host): a kill costs only the requests in flight inside the killed process, so
  failures only on the targets of the faulted model, only for requests in flight when the signal
  was sent (sent before it had landed, or within ``GATEWAY_NOTICE`` after: Nginx may hand a
  request to a kept-alive connection of the killed process before it has read that connection's
  close; seen once in 9 kills of the long form, 6 ms after the kill), answered after it was sent,
  and no more of them than the load's concurrency on that model (each per-request target is one
  client sending one request at a time);
- the faulted model comes back to full capacity, which is measured and shown, never judged by
  speed: only "it comes back" within the generous ``BACK_WITHIN``;
- every target sent requests in every phase (a phase nobody scored through proves nothing).
Targets named ``keepalive:...`` (one reused connection) are counted and shown, never judged:
HTTP/1.1 keep-alive has a race at every reload that no server can close (DESIGN.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

BACK_WITHIN = 120.0  # "it comes back": generous, never a performance target
GATEWAY_NOTICE = 0.5  # after a kill, until the gateway has seen the killed process's connections close
BETWEEN = "between"
KEEPALIVE = "keepalive:"


@dataclass
class Phase:
    name: str
    kind: str  # "quiet" | "fault"
    start: float
    end: float = 0.0
    model: str = ""  # fault: the model it hit (the part of a target label before its first "/")
    fault_at: float = 0.0  # fault: just before the signal was sent
    fault_done: float = 0.0  # fault: once the signal had landed (docker exec takes a while); 0 = fault_at
    ready_at: float = 0.0  # fault: READY, answering and at full capacity again; 0 = never seen
    problems: list[str] = field(default_factory=list)  # checks of the suite's own (events, logs, states)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Cell:
    sent: int = 0
    failed: int = 0
    why: Counter[str] = field(default_factory=Counter)


def target_model(label: str) -> str:
    return label.removeprefix(KEEPALIVE).split("/", 1)[0]


def phase_of(t: float, phases: list[Phase]) -> Phase | None:
    for p in phases:
        if p.start <= t < p.end:
            return p
    return None


def tally(records: list[dict[str, Any]], phases: list[Phase]) -> dict[tuple[str, str], Cell]:
    """(phase name, target) -> requests sent, failed, and why they failed (status or error)."""
    cells: dict[tuple[str, str], Cell] = {}
    for r in records:
        p = phase_of(r["t"], phases)
        cell = cells.setdefault((p.name if p else BETWEEN, r["u"]), Cell())
        cell.sent += 1
        if r["s"] != 200:
            cell.failed += 1
            cell.why[str(r["s"]) if r["s"] else r["e"].split(":", 1)[0]] += 1
    return cells


def concurrency(model: str, targets: list[str]) -> int:
    """Requests the load has in flight on ``model`` at any moment: one per per-request target."""
    return len([t for t in targets if not t.startswith(KEEPALIVE) and target_model(t) == model])


def lost_in(p: Phase, records: list[dict[str, Any]]) -> int:
    """Failed per-request requests on the faulted model during a fault phase."""
    return len([r for r in records if r["s"] != 200 and not r["u"].startswith(KEEPALIVE)
                and target_model(r["u"]) == p.model and phase_of(r["t"], [p]) is p])


def verdict(records: list[dict[str, Any]], phases: list[Phase], targets: list[str]) -> list[str]:
    """Every broken rule, as a sentence; empty when the run passed."""
    problems: list[str] = []
    judged = [t for t in targets if not t.startswith(KEEPALIVE)]
    for r in records:
        if r["s"] == 200 or r["u"].startswith(KEEPALIVE):
            continue
        p = phase_of(r["t"], phases)
        what = f"{r['u']} failed ({r['s'] or r['e'][:80]}) at {r['t']:.2f}"
        if p is None:
            problems.append(f"{what}, between phases")
        elif p.kind != "fault":
            problems.append(f"{what}, during {p.name}")
        elif target_model(r["u"]) != p.model:
            problems.append(f"{what}, during {p.name}, which hit model {p.model} only")
        elif r["t"] + r["d"] < p.fault_at:  # answered before the fault; one in flight dies with it
            problems.append(f"{what}, during {p.name}, before the fault")
        elif r["t"] > (p.fault_done or p.fault_at) + GATEWAY_NOTICE:
            problems.append(f"{what}, during {p.name}, sent after the kill (not in flight in the killed process)")
    for p in phases:
        problems += [f"{p.name}: {x}" for x in p.problems]
        if p.kind == "fault":
            bar = concurrency(p.model, targets)
            lost = lost_in(p, records)
            if lost > bar:
                problems.append(f"{p.name}: {lost} requests to {p.model} failed, more than the {bar} the load "
                                "had in flight")
            if not p.ready_at:
                problems.append(f"{p.name}: {p.model} never back at full capacity")
            elif p.ready_at - p.fault_at > BACK_WITHIN:
                problems.append(f"{p.name}: {p.model} back at full capacity only after "
                                f"{p.ready_at - p.fault_at:.1f} s (it must come back within {BACK_WITHIN:.0f} s)")
    cells = tally(records, phases)
    for p in phases:
        problems += [f"{p.name}: no request was sent to {t}" for t in judged
                     if cells.get((p.name, t), Cell()).sent == 0]
    return problems


def table(records: list[dict[str, Any]], phases: list[Phase], targets: list[str]) -> str:
    """Requests sent/failed per phase and target, then the recovery times of the faults."""
    cells = tally(records, phases)
    names = [p.name for p in phases] + ([BETWEEN] if any(k[0] == BETWEEN for k in cells) else [])
    width = max(len(n) for n in [*names, "phase", "total"]) + 2
    cols = [max(len(t), 13) + 2 for t in targets]
    lines = ["phase".ljust(width) + "".join(t.rjust(c) for t, c in zip(targets, cols, strict=True)),
             " " * width + "".join("sent/failed".rjust(c) for c in cols)]
    for n in [*names, "total"]:
        row = n.ljust(width)
        for t, c in zip(targets, cols, strict=True):
            cs = [v for k, v in cells.items() if k[1] == t and (n == "total" or k[0] == n)]
            row += f"{sum(x.sent for x in cs)}/{sum(x.failed for x in cs)}".rjust(c)
        lines.append(row)
    whys: Counter[str] = Counter()
    for (n, t), cell in cells.items():
        for why, count in cell.why.items():
            whys[f"{n} / {t}: {why}"] += count
    if whys:
        lines.append("failures by phase / target: reason (HTTP status, or the client's error):")
        lines += [f"  {k}: {v}" for k, v in sorted(whys.items())]
    for p in phases:
        if p.kind == "fault":
            took = f"{p.ready_at - p.fault_at:.1f} s" if p.ready_at else "never"
            lines.append(f"{p.name}: {p.model} lost {lost_in(p, records)} requests (bar: "
                         f"{concurrency(p.model, targets)}, the load's concurrency on it); back at full capacity "
                         f"{took} after the fault")
    return "\n".join(lines)
