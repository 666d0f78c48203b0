"""Start, wait for and stop the helper processes of a benchmark.

Each process gets its own session (process group), so stopping it also stops whatever it forked
(gunicorn's workers, uvicorn's), and the benchmark never signals anything it did not start.
Waiting polls a loopback URL (or, for a server on a Unix socket, its ``unix:`` address) with a
deadline: a benchmark must end by itself, even when a server never comes up.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.request
from pathlib import Path

from supervisor.runtime import sockets


def wait_ping(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"no answer from {url}")


def wait_socket(address: str, timeout: float = 180) -> None:
    """As ``wait_ping``, for a scoring server on a Unix socket (``unix:/path``): GET /ping there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sockets.ping(address, timeout=1):
            return
        time.sleep(0.3)
    raise SystemExit(f"no answer from {address}")


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """TERM each process group, then KILL whichever is still there after 20 s."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, 15)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 9)
            p.wait()
