"""The first process of a model's box (PID 1 of its container, or the process bubblewrap starts):
keeps the model host running, so a killed host ends nothing.

Docker ends a container when its PID 1 exits, and every process in it goes too. The model host is
not on the serving path (its scoring servers are), so it must be as replaceable as any of them:
the keeper starts it, starts a new one when it dies (which adopts the servers still running),
reaps whatever orphan is handed to it, and passes SIGTERM/SIGINT (stop) and SIGHUP (re-read
the spec) on. Only a stop it was asked
for ends the container. Stdlib only, like the host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HOST = Path(__file__).resolve().with_name("modelhost.py")
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
HEALTHY_AFTER = 60.0


def _log(msg: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"[{stamp}] keeper: {msg}", flush=True)


def _record(args: list[str], restarts: int, how: str) -> None:
    """Tells the supervisor (through the bind-mounted state dir) that the host was restarted, and why."""
    try:
        state_dir = Path(args[args.index("--state-dir") + 1])
        tmp = state_dir / ".keeper.tmp"
        tmp.write_text(json.dumps({"restarts": restarts, "last_exit": how, "at": time.time()}))
        os.replace(tmp, state_dir / "keeper.json")
    except (ValueError, IndexError, OSError) as exc:
        _log(f"cannot record the restart: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    restarts = 0
    stopping = False
    host: subprocess.Popen[bytes] | None = None

    def _stop(sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if host is not None and host.returncode is None:
            try:
                host.send_signal(sig)
            except ProcessLookupError:
                pass

    def _reload(sig: int, _frame: object) -> None:
        # The process runtime asks the box's keeper, the one process it knows, to re-read the spec.
        if host is not None and host.returncode is None:
            try:
                host.send_signal(sig)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reload)
    backoff = BACKOFF_START
    while not stopping:
        started = time.monotonic()
        host = subprocess.Popen([sys.executable, str(HOST), *args])
        status = 0
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for old Pythons
                continue
            if pid == host.pid:
                host.returncode = status
                break
            # Any other pid: an orphan whose parent died, reaped so it leaves no zombie.
        if stopping:
            break
        ran = time.monotonic() - started
        if ran >= HEALTHY_AFTER:
            backoff = BACKOFF_START
        how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exited with code {os.WEXITSTATUS(status)}")
        _log(f"the model host {how} after {ran:.1f} s; starting a new one in {backoff:.1f} s")
        restarts += 1
        _record(args, restarts, how)
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        backoff = min(BACKOFF_MAX, backoff * 2)
    # Stopped: the host stops its servers; whatever is left is reaped before the container ends.
    if host is not None and host.returncode is None:
        host.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.1)
        except ChildProcessError:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
