"""Find a process of the system under test by its command line, to kill it midway through its work
(a build step, a build inside a Docker build container). Polls ``/proc`` with a deadline: a fault
test ends by itself when the process never shows up. Only processes whose command line names this
test's own data dir or content hash match, so another system on the machine is never touched."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

Argv = list[str]


def argv_of(pid: int | str) -> Argv:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def parent_of(pid: int | str) -> int:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def wait_for_process(what: str, matches: Callable[[int, Argv], bool], timeout: float = 300.0) -> int:
    """The pid of the first process for which ``matches(pid, argv)`` is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                argv = argv_of(entry.name)
                if argv and matches(int(entry.name), argv):
                    return int(entry.name)
        time.sleep(0.01)
    raise AssertionError(f"no {what} within {timeout:.0f} s")
