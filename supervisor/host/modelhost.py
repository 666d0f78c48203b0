"""The model host: one per served model (its "cluster"), one child process per version.

Stdlib only and run as a plain script, because it is also the entrypoint inside a model's
container and imports nothing from the supervisor. It is told what to run by ``spec.json`` in
its state dir (re-read on SIGHUP), keeps each child running (restart with exponential backoff,
reset after a minute of good health), and reports in ``status.json`` (written atomically) what
runs, how often it restarted and why it last exited. Children get PR_SET_PDEATHSIG so a host
killed with SIGKILL never leaves orphan scoring servers holding their ports.

A child that is alive but hung (deadlocked, stopped, stuck in a call) exits never, so the host
also asks each child's ``/ping`` from a thread of its own: a child that answered once and then
answers nothing for its ``liveness`` window is killed, and restarted like any other that died.
Children still loading are never judged by it (the deployer's start timeout covers them).
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0  # a child that ran this long gets its backoff reset
STOP_GRACE = 10.0
STATUS_EVERY = 5.0
PR_SET_PDEATHSIG = 1


def _log(msg: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"[{stamp}] modelhost: {msg}", flush=True)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass  # not Linux: children may outlive a killed host


def probe_timeout(window: float) -> float:
    """Each /ping may take a quarter of the window: a busy child is slow, not dead."""
    return max(0.2, min(10.0, window / 4))


def exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {name}"
    return f"exited with code {os.WEXITSTATUS(status)}"


class Child:
    def __init__(self, version: str, spec: dict[str, Any]) -> None:
        self.version = version
        self.spec = spec
        self.proc: subprocess.Popen[bytes] | None = None
        self.state = "stopped"
        self.restarts = 0
        self.attempt = 0
        self.backoff = BACKOFF_START
        self.next_start = 0.0
        self.started_at: float | None = None
        self.last_exit: str | None = None
        self.last_exit_at: float | None = None
        # Written by the probe thread: when the running child last answered /ping, and why it is
        # being killed (then the reason its exit is reported with).
        self.answered_at: float | None = None
        self.kill_reason: str | None = None

    @property
    def liveness(self) -> tuple[int, float] | None:
        """(port, window in seconds) when this child's /ping is watched."""
        spec = self.spec.get("liveness") or {}
        port, window = spec.get("port"), spec.get("seconds")
        if isinstance(port, int) and isinstance(window, (int, float)) and window > 0:
            return port, float(window)
        return None

    def probe(self) -> bool:
        """Asks /ping once; kills a child that answered before and has been silent for its window.

        True when this was the child's first answer (worth reporting at once)."""
        watch, proc = self.liveness, self.proc
        if watch is None or proc is None or self.kill_reason is not None:
            return False
        port, window = watch
        # http.client, not urllib: urllib would send it through an http_proxy set for the model.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=probe_timeout(window))
        try:
            conn.request("GET", "/ping")
            ok = conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        finally:
            conn.close()
        now = time.monotonic()
        if proc is not self.proc:
            return False  # restarted meanwhile: this answer was about the old one
        if ok:
            first, self.answered_at = self.answered_at is None, now
            return first
        if self.answered_at is not None and now - self.answered_at >= window:
            self.kill_reason = f"did not answer /ping for {now - self.answered_at:.0f} s (killed by the host)"
            _log(f"version {self.version} {self.kill_reason}")
            try:
                proc.kill()  # reaped by the main loop like any other exit
            except OSError:
                pass
        return False

    def start(self) -> None:
        self.attempt += 1
        log_path = Path(self.spec["log"])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with open(log_path, "ab", buffering=0) as logf:
            logf.write(f"--- modelhost: starting version {self.version} (attempt {self.attempt}) at {stamp} ---\n"
                       .encode())
            env = dict(os.environ)
            env.update({k: str(v) for k, v in (self.spec.get("env") or {}).items()})
            self.proc = subprocess.Popen(
                [str(a) for a in self.spec["argv"]], stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent, close_fds=True,
            )
        self.state = "running"
        self.started_at = time.time()
        self.answered_at = None
        self.kill_reason = None
        _log(f"version {self.version} started (pid {self.proc.pid})")

    def exited(self, status: int) -> None:
        """The child died on its own: schedule a restart with backoff."""
        now = time.time()
        ran = now - (self.started_at or now)
        self.last_exit = self.kill_reason or exit_reason(status)
        self.last_exit_at = now
        self.proc = None
        if ran >= HEALTHY_AFTER:
            self.backoff = BACKOFF_START
        self.state = "backoff"
        self.next_start = time.monotonic() + self.backoff
        _log(f"version {self.version} {self.last_exit} after {ran:.1f} s; restarting in {self.backoff:.0f} s")
        self.backoff = min(BACKOFF_MAX, self.backoff * 2)

    def stop(self) -> None:
        if self.proc is None:
            self.state = "stopped"
            return
        proc = self.proc
        self.proc = None
        self.state = "stopped"
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _log(f"version {self.version} stopped")

    def status(self) -> dict[str, Any]:
        return {
            "pid": self.proc.pid if self.proc else None,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_exit_at": self.last_exit_at,
            "started_at": self.started_at,
            "answering": self.answered_at is not None,
        }


class Host:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.model = ""
        self.children: dict[str, Child] = {}
        self.reload_requested = True
        self.stop_requested = False
        self.last_status = 0.0
        self.status_due = False  # set by the probe thread, written by the main loop

    def read_spec(self) -> dict[str, Any]:
        try:
            spec = json.loads((self.state_dir / "spec.json").read_text())
        except (OSError, ValueError) as exc:
            _log(f"cannot read spec.json ({exc}); keeping the current versions")
            return {"model": self.model, "versions": {v: c.spec for v, c in self.children.items()}}
        return spec if isinstance(spec, dict) else {}

    def apply_spec(self) -> None:
        spec = self.read_spec()
        self.model = str(spec.get("model", self.model))
        wanted: dict[str, dict[str, Any]] = spec.get("versions") or {}
        for version in list(self.children):
            child = self.children[version]
            if version not in wanted or wanted[version] != child.spec:
                child.stop()
                del self.children[version]
        for version, vspec in wanted.items():
            if version not in self.children:
                child = Child(version, vspec)
                self.children[version] = child
                child.start()
        self.write_status()

    def probe_forever(self) -> None:
        while not self.stop_requested:
            for child in list(self.children.values()):
                if child.probe():
                    self.status_due = True
            # Once a second (sooner for short windows): a ping costs a server next to nothing, and a
            # child that answers soon after it starts is judged from then on.
            windows = [w[1] for c in list(self.children.values()) if (w := c.liveness)]
            time.sleep(max(0.1, min([1.0] + [w / 6 for w in windows])))

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for child in self.children.values():
                if child.proc is not None and child.proc.pid == pid:
                    child.proc.returncode = status  # so Popen does not wait on it again
                    child.exited(status)
                    self.write_status()

    def restart_due(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.state == "backoff" and now >= child.next_start:
                child.restarts += 1
                child.start()
                self.write_status()

    def write_status(self) -> None:
        status = {
            "host_pid": os.getpid(),
            "model": self.model,
            "updated": time.time(),
            "versions": {v: c.status() for v, c in self.children.items()},
        }
        path = self.state_dir / "status.json"
        tmp = self.state_dir / f".status.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(status))
        os.replace(tmp, path)
        self.last_status = time.monotonic()

    def run(self) -> int:
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload_requested", True))
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop_requested", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stop_requested", True))
        _log(f"started (pid {os.getpid()}, state dir {self.state_dir})")
        threading.Thread(target=self.probe_forever, name="liveness", daemon=True).start()
        while not self.stop_requested:
            if self.reload_requested:
                self.reload_requested = False
                self.apply_spec()
            self.reap()
            self.restart_due()
            if self.status_due or time.monotonic() - self.last_status >= STATUS_EVERY:
                self.status_due = False
                self.write_status()
            time.sleep(0.1)
        _log("stopping every version")
        for child in self.children.values():
            child.stop()
        self.write_status()
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="modelserve model host")
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    return Host(args.state_dir).run()


if __name__ == "__main__":
    sys.exit(main())
