"""Stopping the whole system: the stop signals of a foreground ``modelserve up``, and what a stop
found still running.

Model hosts are detached from the supervisor on purpose (a restarted API or reconciler must never
stop serving), so nothing stops them as a side effect: only an explicit stop of the whole system
does, the launcher's own or ``modelserve down``'s. Both must then say what they stopped, because
a user who reads "was not running" believes nothing was left, and both must keep stopping when
the terminal they write to has gone away (a closed pipe or terminal would otherwise abort the
stop halfway and leave the hosts running). Kept apart from ``launcher.py`` so that all of it can
be tested without starting any process.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType

from supervisor.runtime import make_runtime
from supervisor.runtime.base import Runtime
from supervisor.settings import Settings

Echo = Callable[[str], None]

# What a terminal sends a foreground process: Ctrl-C, a kill, its window being closed.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def tolerant(echo: Echo) -> Echo:
    """``echo`` that never raises OSError: a stop must go on after its terminal or pipe is gone."""
    def say(message: str) -> None:
        try:
            echo(message)
        except OSError:
            pass
    return say


def _stderr(message: str) -> None:
    # Called from a signal handler, which may interrupt a write to sys.stdout or sys.stderr:
    # a raw write cannot re-enter their buffers.
    try:
        os.write(2, (message + "\n").encode())
    except OSError:
        pass


class StopSignals:
    """Turns the stop signals into a flag the launcher polls, and answers a repeated one with a
    line saying the stop is under way (the model hosts, stopped last, are what takes time)."""

    def __init__(self, notice: Echo = _stderr) -> None:
        self.requested = False
        self.notice = notice
        self._noticed = False

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            # Under nohup SIGHUP is ignored on purpose: keep it so.
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            signal.signal(sig, self.handle)

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        if self.requested and not self._noticed:
            self._noticed = True
            self.notice("modelserve is stopping (the model hosts last); wait for 'modelserve stopped', "
                        "or run `modelserve down` if this terminal goes away")
        self.requested = True


def _running(runtime: Runtime, model: str) -> bool:
    """Whether the model's host or any of its scoring servers runs (they outlive a dead host)."""
    try:
        state = runtime.host_state(model)
    except Exception:  # an engine that does not answer: stop_host is tried all the same
        return False
    return state is not None and (state.alive or any(v.running for v in state.versions.values()))


def stop_model_hosts(settings: Settings) -> int:
    """Stops every model host the runtime knows; returns how many had something running."""
    runtime = make_runtime(settings)
    running = 0
    for model in runtime.hosts():
        if _running(runtime, model):
            running += 1
        runtime.stop_host(model)
    return running


@dataclass(frozen=True)
class Leftovers:
    """What a stop found running without the launcher that should have stopped it."""

    processes: int = 0  # the supervisor's own: mlflow, reconciler, api
    gateway: bool = False
    model_hosts: int = 0

    def __bool__(self) -> bool:
        return bool(self.processes or self.gateway or self.model_hosts)

    def describe(self) -> str:
        """'the gateway, 3 supervisor processes and 2 model hosts', or '' for nothing."""
        parts = (["the gateway"] if self.gateway else []) + [
            f"{n} {one if n == 1 else many}"
            for n, one, many in ((self.processes, "supervisor process", "supervisor processes"),
                                 (self.model_hosts, "model host", "model hosts")) if n
        ]
        return " and ".join(parts) if len(parts) < 3 else f"{parts[0]}, {parts[1]} and {parts[2]}"


def down_message(launcher_was_running: bool, left: Leftovers, killed_after: float | None = None) -> str:
    """What ``modelserve down`` says: the truth about what it stopped."""
    if not launcher_was_running:
        if not left:
            return "modelserve was not running"
        return f"modelserve was not running; stopped {left.describe()} left running"
    if killed_after is None:
        return "modelserve stopped"
    tail = f"; stopped {left.describe()} it left running" if left else ""
    return f"modelserve stopped (its launcher did not stop within {killed_after:.0f} s and was killed{tail})"


def alive_pids(pids: Iterable[object], alive: Callable[[int], bool]) -> list[int]:
    return [int(p) for p in pids if isinstance(p, int) and p > 1 and alive(p)]
