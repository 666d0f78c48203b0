"""The churn suite's judge: which failures break which rule."""

from __future__ import annotations

from typing import Any

from tests.reliability.record import Phase, table, verdict

TARGETS = ["A/Production", "B/1", "keepalive:A/Production"]


def req(t: float, target: str, status: int = 200) -> dict[str, Any]:
    return {"t": t, "d": 0.01, "u": target, "s": status, "e": "" if status else "ConnectionError: reset"}


def steady(start: float, end: float, *failing: tuple[float, str, int]) -> list[dict[str, Any]]:
    out = [req(start + i * 0.5, t) for i in range(int((end - start) * 2)) for t in TARGETS]
    return out + [req(*f) for f in failing]


PHASES = [
    Phase("1.nginx-reloads", "quiet", 100.0, 110.0),
    Phase("1.kill-version", "fault", 110.0, 130.0, model="A", fault_at=111.0, ready_at=115.0),
]


def test_a_clean_run_passes_and_counts_every_request() -> None:
    records = steady(100, 130)
    assert verdict(records, PHASES, TARGETS) == []
    text = table(records, PHASES, TARGETS)
    assert "1.nginx-reloads" in text and "20/0" in text and "back at full capacity 4.0 s after" in text
    assert "1.kill-version: A lost 0 requests (bar: 1" in text


def test_a_failure_in_a_quiet_phase_fails_the_run() -> None:
    problems = verdict(steady(100, 130, (105.0, "A/Production", 503)), PHASES, TARGETS)
    assert len(problems) == 1 and "during 1.nginx-reloads" in problems[0]


def test_fault_failures_only_on_that_model_and_only_in_flight_at_the_kill() -> None:
    ok = [dict(req(110.95, "A/Production", 0), d=0.2)]  # in flight when the signal was sent
    assert verdict(steady(100, 130) + ok, PHASES, TARGETS) == []
    other_model = verdict(steady(100, 130, (112.0, "B/1", 502)), PHASES, TARGETS)
    assert "which hit model A only" in other_model[0]
    late = verdict(steady(100, 130, (112.0, "A/Production", 503)), PHASES, TARGETS)
    assert "sent after the kill" in late[0]
    # Handed to a kept-alive connection of the killed process before the gateway saw it close.
    assert verdict(steady(100, 130, (111.2, "A/Production", 503)), PHASES, TARGETS) == []


def test_more_failures_than_the_load_had_in_flight_fail_the_run() -> None:
    # Two A targets: at most two requests in flight on A when it was hit.
    targets = ["A/Production", "A/1", "B/1"]
    phase = [Phase("k", "fault", 0, 30, model="A", fault_at=10.0, fault_done=10.5, ready_at=12.0)]
    base = [req(i * 0.5, t) for i in range(60) for t in targets]
    two = [dict(req(10.1, "A/Production", 0), d=1.0), dict(req(10.2, "A/1", 0), d=1.0)]
    assert verdict(base + two, phase, targets) == []
    three = [*two, dict(req(10.3, "A/1", 0), d=1.0)]
    assert "3 requests to A failed, more than the 2" in verdict(base + three, phase, targets)[0]


def test_recovery_is_judged_only_by_coming_back() -> None:
    slow_but_back = [Phase("k", "fault", 0, 60, model="A", fault_at=1.0, ready_at=40.0)]
    assert verdict(steady(0, 60), slow_but_back, TARGETS) == []
    gone = [Phase("k", "fault", 0, 200, model="A", fault_at=1.0, ready_at=150.0)]
    assert "only after 149.0 s" in verdict(steady(0, 200), gone, TARGETS)[0]
    never = [Phase("k", "fault", 0, 30, model="A", fault_at=1.0, problems=["no event"])]
    assert verdict(steady(0, 30), never, TARGETS) == ["k: no event", "k: A never back at full capacity"]


def test_keepalive_failures_are_shown_not_judged_and_silent_targets_are() -> None:
    records = steady(100, 130, (105.0, "keepalive:A/Production", 0))
    assert verdict(records, PHASES, TARGETS) == []
    assert "keepalive:A/Production: ConnectionError" in table(records, PHASES, TARGETS)
    quiet_b = [r for r in records if not (r["u"] == "B/1" and r["t"] < 110)]
    assert verdict(quiet_b, PHASES, TARGETS) == ["1.nginx-reloads: no request was sent to B/1"]


def test_requests_between_phases_are_judged_too() -> None:
    gap = [Phase("a", "quiet", 0, 10), Phase("b", "quiet", 20, 30)]
    problems = verdict(steady(0, 10) + steady(20, 30, (15.0, "A/Production", 503)), gap, TARGETS)
    assert problems == ["A/Production failed (503) at 15.00, between phases"]


def test_a_request_in_flight_at_the_fault_may_fail_with_it() -> None:
    in_flight = dict(req(110.99, "A/Production", 503), d=0.02)  # sent before the kill, answered after
    assert verdict(steady(100, 130) + [in_flight], PHASES, TARGETS) == []
    before = dict(req(110.5, "A/Production", 503), d=0.02)
    assert "before the fault" in verdict(steady(100, 130) + [before], PHASES, TARGETS)[0]
