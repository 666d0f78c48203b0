"""The model host: one per served model (its "cluster"), one scoring server per version.

Stdlib only and run as a plain script, because it is also the entrypoint inside a model's
container and imports nothing from the supervisor. It is told what to run by ``spec.json`` (in
its state dir, or ``--spec``; re-read on SIGHUP), keeps each server running (restart with exponential backoff,
reset after a minute of good health), and reports in ``status.json`` (written atomically) what
runs, how often it restarted and why it last exited.

The host is not on the serving path, so its death must not stop serving: each scoring server
leads a process group of its own (its forked workers) and outlives a killed host. A new host
reads the last ``status.json``, adopts every server still running the same command line, and
watches it through /proc (it cannot wait() on a process it did not start). A server whose
parent dies leaves its workers serving; the replacement takes their listening socket over
(``scoring/handoff.py``) and retires them, and the host counts them apart (``retiring``) until
they are gone. The host is a child subreaper, so such orphans are reaped by it, not left as
zombies.

A server that is alive but hung (deadlocked, stopped, stuck in a call) exits never, so the host
also asks each server's ``/ping`` from a thread of its own: one that answered once and then
answers nothing for its ``liveness`` window is killed with its whole group, and restarted like
any other that died. Servers still loading are never judged by it (the deployer's start timeout
covers them).
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import os
import signal
import socket
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
STATUS_EVERY_CHANGING = 0.5  # while a version is below its full worker count or has workers retiring
RETIRE_GRACE = 30.0  # an older generation still alive this long after its replacement started is killed
PR_SET_CHILD_SUBREAPER = 36


def _log(msg: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"[{stamp}] modelhost: {msg}", flush=True)


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except OSError:
        pass  # not Linux: orphaned workers are reaped by init instead


def process_groups() -> dict[int, list[int]]:
    """Process group -> its live (not zombie) pids, read from /proc in one pass."""
    groups: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return groups
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != b"Z":
            groups.setdefault(int(fields[2]), []).append(int(name))
    return groups


def cmdline(pid: int) -> list[str] | None:
    """A live process's argv, or None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b") ", 1)[1].startswith(b"Z"):
                return None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (OSError, IndexError):
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def serves_from(pid: int, state_dir: Path) -> bool:
    """Whether ``pid`` is a scoring server process (a parent or a worker) of the host whose state
    dir is ``state_dir``: its ``--handoff-dir`` lies inside it. A process group named by an old
    status file is signalled only when it holds such a process, never on the word of the file
    alone (after a reboot, its number may belong to anything)."""
    argv = cmdline(pid)
    if not argv or "--handoff-dir" not in argv:
        return False
    where = argv.index("--handoff-dir") + 1
    return where < len(argv) and argv[where].startswith(str(state_dir).rstrip("/") + "/")


def our_groups(candidates: list[int], state_dir: Path, groups: dict[int, list[int]]) -> list[int]:
    """The ``candidates`` that still hold a scoring server of this state dir."""
    return [g for g in candidates if any(serves_from(p, state_dir) for p in groups.get(g, []))]


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def has_workers(pid: int) -> bool:
    """Whether a server's parent has forked its workers, which it does only once it accepts on the
    version's socket (taken over from an older generation, or its own)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return bool(f.read().split())
    except OSError:
        return False


def wanted_workers(argv: list[str]) -> int:
    """The worker count a server's argv asks for, as the scoring server works it out."""
    try:
        value = argv[argv.index("--workers") + 1]
    except (ValueError, IndexError):
        return 1
    if value == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(2, cores))
    return int(value) if value.isdigit() and int(value) > 0 else 1


def probe_timeout(window: float) -> float:
    """Each /ping may take a quarter of the window: a busy child is slow, not dead."""
    return max(0.2, min(10.0, window / 4))


def ping_socket(path: str, timeout: float) -> bool:
    """Whether the scoring server on the Unix socket ``path`` answers ``GET /ping`` with 200."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        conn = http.client.HTTPConnection("localhost", timeout=timeout)
        conn.sock = sock  # http.client speaks HTTP over whatever socket it is given
        conn.request("GET", "/ping")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        sock.close()


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
        self.proc: subprocess.Popen[bytes] | None = None  # a server this host started
        self.pid: int | None = None  # the running server's parent, started or adopted
        self.adopted = False
        self.generation = 0  # one per start or adoption, so the probe thread never judges a successor
        self.old_groups: list[int] = []  # process groups of earlier generations, still serving or retiring
        self.state = "stopped"
        self.restarts = 0
        self.attempt = 0
        self.backoff = BACKOFF_START
        self.next_start = 0.0
        self.started_at: float | None = None
        self.took_over_at: float | None = None  # when this generation was first seen serving
        self.last_exit: str | None = None
        self.last_exit_at: float | None = None
        # Written by the probe thread: when the running server last answered /ping, and why it is
        # being killed (then the reason its exit is reported with).
        self.answered_at: float | None = None
        self.kill_reason: str | None = None

    @property
    def argv(self) -> list[str]:
        return [str(a) for a in self.spec["argv"]]

    @property
    def liveness(self) -> tuple[str, float] | None:
        """(the server's Unix socket, window in seconds) when its /ping is watched."""
        spec = self.spec.get("liveness") or {}
        path, window = spec.get("socket"), spec.get("seconds")
        if isinstance(path, str) and isinstance(window, (int, float)) and window > 0:
            return path, float(window)
        return None

    def probe(self) -> bool:
        """Asks /ping once; kills a server that answered before and has been silent for its window.

        True when this was the server's first answer (worth reporting at once)."""
        watch, pid, generation = self.liveness, self.pid, self.generation
        if watch is None or pid is None or self.kill_reason is not None:
            return False
        path, window = watch
        ok = ping_socket(path, probe_timeout(window))
        now = time.monotonic()
        if generation != self.generation:
            return False  # restarted meanwhile: this answer was about the old one
        if self.old_groups and not has_workers(pid):
            # An older generation still answers on the port while this one loads: its answer, or
            # its silence, says nothing about this server.
            return False
        if ok:
            first, self.answered_at = self.answered_at is None, now
            return first
        if self.answered_at is not None and now - self.answered_at >= window:
            self.kill_reason = f"did not answer /ping for {now - self.answered_at:.0f} s (killed by the host)"
            _log(f"version {self.version} {self.kill_reason}")
            # The whole group: the hang is as likely in a worker as in the parent, and hung
            # workers left behind would hold the port. Reaped by the main loop like any exit.
            signal_group(pid, signal.SIGKILL)
        return False

    def _started(self, pid: int) -> None:
        self.pid = pid
        self.generation += 1
        self.state = "running"
        self.answered_at = None
        self.kill_reason = None
        self.took_over_at = None

    def start(self) -> None:
        self.attempt += 1
        log_path = Path(self.spec["log"])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with open_log(log_path) as logf:
            logf.write(f"--- modelhost: starting version {self.version} (attempt {self.attempt}) at {stamp} ---\n"
                       .encode())
            env = dict(os.environ)
            env.update({k: str(v) for k, v in (self.spec.get("env") or {}).items()})
            # Its own session and group: it outlives this host, and its workers are signalled as one.
            self.proc = subprocess.Popen(
                self.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, close_fds=True,
            )
        self.adopted = False
        self.started_at = time.time()
        self._started(self.proc.pid)
        _log(f"version {self.version} started (pid {self.proc.pid})")

    def adopt(self, pid: int, previous: dict[str, Any]) -> None:
        """Takes over a server a killed host started: same command line, still running."""
        self.proc = None
        self.adopted = True
        self.restarts = int(previous.get("restarts") or 0)
        self.last_exit = previous.get("last_exit")
        self.last_exit_at = previous.get("last_exit_at")
        started = previous.get("started_at")
        self.started_at = float(started) if isinstance(started, (int, float)) else time.time()
        self.old_groups = [g for g in previous.get("old_groups") or [] if isinstance(g, int) and g > 1]
        self._started(pid)
        _log(f"version {self.version}: adopted its running scoring server (pid {pid})")

    def exited(self, status: int | None) -> None:
        """The server died on its own: schedule a restart with backoff. ``status`` is None for
        an adopted server, whose exit status only its real parent saw."""
        now = time.time()
        ran = now - (self.started_at or now)
        if self.kill_reason:
            self.last_exit = self.kill_reason
        elif status is None:
            self.last_exit = "exited (adopted from an earlier host, so its exit status is unknown)"
        else:
            self.last_exit = exit_reason(status)
        self.last_exit_at = now
        if self.pid is not None and self.pid not in self.old_groups and process_groups().get(self.pid):
            # Its workers go on serving until the replacement takes their socket over.
            self.old_groups.append(self.pid)
        self.proc = None
        self.pid = None
        self.adopted = False
        if ran >= HEALTHY_AFTER:
            self.backoff = BACKOFF_START
        self.state = "backoff"
        self.next_start = time.monotonic() + self.backoff
        _log(f"version {self.version} {self.last_exit} after {ran:.1f} s; restarting in {self.backoff:.0f} s")
        self.backoff = min(BACKOFF_MAX, self.backoff * 2)

    def stop(self) -> None:
        groups = [g for g in [self.pid, *self.old_groups] if g is not None]
        proc = self.proc
        self.proc = None
        self.pid = None
        self.old_groups = []
        self.state = "stopped"
        for group in groups:
            signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()  # reaps our own child, which would otherwise stay a zombie in its group
            live = process_groups()
            if not any(live.get(g) for g in groups):
                break
            time.sleep(0.05)
        else:
            for group in groups:
                signal_group(group, signal.SIGKILL)
        if proc is not None:
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
        if groups:
            _log(f"version {self.version} stopped")

    def tend_old_groups(self, groups: dict[int, list[int]]) -> None:
        """Forgets earlier generations that have left; kills those that outstay their replacement
        by ``RETIRE_GRACE`` once it serves (has forked its workers on the socket): never while it
        is still loading, when they are all that answers."""
        self.old_groups = [g for g in self.old_groups if groups.get(g)]
        if not self.old_groups or self.pid is None:
            return
        if self.took_over_at is None:
            if any(p != self.pid for p in groups.get(self.pid, [])):
                self.took_over_at = time.monotonic()
            return
        if time.monotonic() - self.took_over_at > RETIRE_GRACE:
            for group in self.old_groups:
                _log(f"version {self.version}: an earlier generation (group {group}) did not retire; killing it")
                signal_group(group, signal.SIGKILL)

    def status(self, groups: dict[int, list[int]]) -> dict[str, Any]:
        members = groups.get(self.pid, []) if self.pid is not None else []
        return {
            "pid": self.pid,
            "state": self.state,
            "adopted": self.adopted,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_exit_at": self.last_exit_at,
            "started_at": self.started_at,
            "answering": self.answered_at is not None,
            "workers": len([p for p in members if p != self.pid]),
            "wanted_workers": wanted_workers(self.argv),
            "old_groups": list(self.old_groups),
            "retiring": sum(len(groups.get(g, [])) for g in self.old_groups),
        }


STATE_FILE_MAX = 4 << 20


def open_log(path: Path) -> Any:
    """The version's log for appending. The model's code may have put a FIFO there (an open for
    writing would block until someone reads it) or a symlink: anything but a regular file is
    replaced by a new, empty log."""
    import stat

    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        fd = -1
    if fd >= 0 and not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        fd = -1
    if fd < 0:
        os.unlink(path)
        fd = os.open(path, flags | os.O_EXCL, 0o644)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "ab", buffering=0)


def read_state_file(path: Path) -> str:
    """A file of the state dir, which the model's own code may have replaced (a FIFO that would
    block the open forever, a symlink, a huge file): regular files only, bounded. OSError else."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = os.read(fd, STATE_FILE_MAX + 1)
    finally:
        os.close(fd)
    if len(data) > STATE_FILE_MAX:
        raise OSError(f"{path} is over {STATE_FILE_MAX} bytes")
    return data.decode("utf-8", errors="replace")


class Host:
    def __init__(self, state_dir: Path, spec_path: Path | None = None) -> None:
        # First: a reload or stop asked for while this host starts must not kill it (the
        # default action of SIGHUP) nor be lost; run() acts on the flags.
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload_requested", True))
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop_requested", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stop_requested", True))
        self.state_dir = state_dir
        # Beside the status by default; in a box the spec is the supervisor's, mounted read-only.
        self.spec_path = spec_path or state_dir / "spec.json"
        self.model = ""
        self.children: dict[str, Child] = {}
        self.reload_requested = True
        self.stop_requested = False
        self.last_status = 0.0
        self.status_due = False  # set by the probe thread, written by the main loop
        self.changing = False  # some version below full capacity or with workers retiring
        self.previous = self.read_previous()

    def read_previous(self) -> dict[str, dict[str, Any]]:
        """What an earlier host of this state dir reported last (it may have been killed)."""
        try:
            status = json.loads(read_state_file(self.state_dir / "status.json"))
        except (OSError, ValueError):
            return {}
        versions = status.get("versions") if isinstance(status, dict) else None
        if not isinstance(versions, dict) or status.get("host_pid") == os.getpid():
            return {}
        return {str(v): d for v, d in versions.items() if isinstance(d, dict)}

    def read_spec(self) -> dict[str, Any]:
        try:
            spec = json.loads(read_state_file(self.spec_path))
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
        previous, self.previous = self.previous, {}
        for version, vspec in wanted.items():
            if version not in self.children:
                child = Child(version, vspec)
                self.children[version] = child
                before = previous.pop(version, {})
                pid = before.get("pid")
                if isinstance(pid, int) and pid > 1 and cmdline(pid) == child.argv:
                    child.adopt(pid, before)
                    child.old_groups = self._ours(child.old_groups)
                else:
                    child.old_groups = self._ours(before.get("old_groups"))
                    child.start()
        for version, before in previous.items():
            # Served by the killed host, no longer wanted: its processes are stopped all the same.
            orphan = Child(version, {"argv": []})
            orphan.old_groups = self._ours([before.get("pid"), *(before.get("old_groups") or [])])
            orphan.stop()
        self.write_status()

    def _ours(self, candidates: Any) -> list[int]:
        wanted = [g for g in candidates or [] if isinstance(g, int) and g > 1]
        return our_groups(wanted, self.state_dir, process_groups()) if wanted else []

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
                break
            if pid == 0:
                break
            # Besides our own servers, orphaned workers of dead ones end here (we are their subreaper).
            for child in self.children.values():
                if child.proc is not None and child.proc.pid == pid:
                    child.proc.returncode = status  # so Popen does not wait on it again
                    child.exited(status)
                    self.write_status()
        for child in self.children.values():
            if child.adopted and child.pid is not None and cmdline(child.pid) is None:
                child.exited(None)
                self.write_status()

    def restart_due(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.state == "backoff" and now >= child.next_start:
                child.restarts += 1
                child.start()
                self.write_status()

    def write_status(self) -> None:
        groups = process_groups()
        versions = {}
        for v, c in self.children.items():
            c.old_groups = our_groups(c.old_groups, self.state_dir, groups)
            c.tend_old_groups(groups)
            versions[v] = c.status(groups)
        self.changing = any(d["state"] != "running" or d["workers"] < d["wanted_workers"] or d["retiring"]
                            for d in versions.values())
        status = {
            "host_pid": os.getpid(),
            "model": self.model,
            "updated": time.time(),
            "versions": versions,
        }
        path = self.state_dir / "status.json"
        tmp = self.state_dir / f".status.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(status))
        os.replace(tmp, path)
        self.last_status = time.monotonic()

    def run(self) -> int:
        _become_subreaper()
        _log(f"started (pid {os.getpid()}, state dir {self.state_dir})")
        threading.Thread(target=self.probe_forever, name="liveness", daemon=True).start()
        while not self.stop_requested:
            if self.reload_requested:
                self.reload_requested = False
                self.apply_spec()
            self.reap()
            self.restart_due()
            every = STATUS_EVERY_CHANGING if self.changing else STATUS_EVERY
            if self.status_due or time.monotonic() - self.last_status >= every:
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
    parser.add_argument("--spec", type=Path, help="the spec to run (default: <state dir>/spec.json)")
    args = parser.parse_args(argv)
    return Host(args.state_dir, args.spec).run()


if __name__ == "__main__":
    sys.exit(main())
