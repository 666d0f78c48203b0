"""A hostile MLflow model (logged as "models from code": this file is the model).

Every prediction is one attack, chosen by the request: a one-row frame whose ``action`` column
names it and whose ``args`` column is a JSON string of what the test knows and the box cannot
discover (the data dir, the supervisor's pids, another model's socket path). The answer is a
JSON report, so the model's code stays generic and every judgement is the test's:

* ``probe``: try to read, write, connect and signal everything outside the box;
  ``{attempt: "refused: <error>" | "SUCCEEDED: <what>"}``, plus ``info`` (what it saw).
* ``allocate``: touch ``mib`` MiB of memory (past the box's limit: the kernel kills it).
* ``fork_bomb`` / ``thread_bomb``: start processes / threads until the box refuses one, then
  release them all; ``{started, error}``.
* ``burn``: ``processes`` busy children for ``seconds``; their CPU time (from ``wait4``) and
  the wall time.
* ``tamper``: rewrite the box's own status file with ``variant`` for ``seconds`` (in a thread),
  or replace a file of its state or socket dir with a symlink.
* ``kill_box``: kill the box's own keeper, so the supervisor starts the box anew.
* ``ping``: ``{"ok": true}`` (the model still answers).

Stdlib and MLflow only, so every hostile model shares one environment with the neighbour.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import threading
import time
from typing import Any

import mlflow.pyfunc
from mlflow.models import set_model

Report = dict[str, Any]


def _refused(exc: BaseException) -> str:
    return f"refused: {type(exc).__name__}: {exc}"


def _read(path: str) -> str:
    try:
        if os.path.isdir(path):
            return f"SUCCEEDED: listed {path}: {sorted(os.listdir(path))[:20]}"
        with open(path, "rb") as f:
            data = f.read(4096)
        return f"SUCCEEDED: read {len(data)} bytes of {path}: {data[:60]!r}"
    except OSError as exc:
        return _refused(exc)


def _write(directory: str) -> str:
    path = os.path.join(directory, f".hostile-{os.getpid()}")
    try:
        with open(path, "wb") as f:
            f.write(b"hostile")
    except OSError as exc:
        return _refused(exc)
    try:
        os.unlink(path)
    except OSError:
        pass
    return f"SUCCEEDED: wrote {path}"


def _connect(family: int, address: Any, request: bytes) -> str:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(address)
        s.sendall(request)
        return f"SUCCEEDED: connected to {address}, answer {s.recv(80)!r}"
    except OSError as exc:
        return _refused(exc)
    finally:
        s.close()


def _tcp(port: int) -> str:
    return _connect(socket.AF_INET, ("127.0.0.1", port), b"GET / HTTP/1.0\r\n\r\n")


def _unix(path: str) -> str:
    return _connect(socket.AF_UNIX, path, b"GET /ping HTTP/1.0\r\n\r\n")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _signal(pid: int, marker: str) -> dict[str, str]:
    """Signal 0 and SIGTERM to ``pid`` (a pid of the machine, as the test sees it). Inside the
    box's PID namespace the same number may be one of the box's own processes: SIGTERM is only
    sent when the process there is the target (its command line has ``marker``)."""
    out: dict[str, str] = {}
    try:
        os.kill(pid, 0)
    except OSError as exc:
        out["kill0"] = _refused(exc)
    else:
        here = _cmdline(pid)
        if marker in here:
            out["kill0"] = f"SUCCEEDED: signal 0 reached pid {pid} ({here[:120]})"
        else:
            out["kill0"] = f"refused: pid {pid} in the box is its own process ({here[:120]}), not the target"
    here = _cmdline(pid)
    if os.path.exists(f"/proc/{pid}") and marker not in here:
        out["sigterm"] = f"refused: not sent, pid {pid} in the box is its own process ({here[:120]})"
        return out
    try:
        os.kill(pid, signal.SIGTERM)
        out["sigterm"] = f"SUCCEEDED: SIGTERM sent to pid {pid} ({here[:120]})"
    except OSError as exc:
        out["sigterm"] = _refused(exc)
    return out


def _status_fields() -> dict[str, str]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def probe(args: dict[str, Any]) -> Report:
    data = args["data_dir"]
    attempts: dict[str, str] = {}
    for name, path in args["secrets"].items():
        attempts[f"read {name}"] = _read(path)
    attempts["read /etc/shadow"] = _read("/etc/shadow")
    # Directories the box has as the empty parents of what it is given: listing them may work,
    # but must show nothing of anyone else.
    listings = {}
    for path in args["listings"]:
        try:
            listings[path] = sorted(os.listdir(path))
        except OSError as exc:
            attempts[f"list {path}"] = _refused(exc)
            continue
        own_root = args["own_root_entries"] if path == "/" else []
        foreign = [n for n in listings[path] if n in args["foreign_names"] and n not in own_root]
        attempts[f"list {path}"] = (f"SUCCEEDED: {path} shows {foreign}" if foreign
                                    else f"refused: only the box's own entries {listings[path][:10]}")
    for pid in args["supervisor_pids"]:
        for what in ("environ", "cmdline"):
            attempts[f"read /proc/{pid}/{what} (supervisor)"] = _read(f"/proc/{pid}/{what}")
    for directory in ("/", "/etc", "/usr", "/usr/local/lib", "/var/tmp", "/dev", "/run", data,
                      *args["own_readonly"]):
        attempts[f"write {directory}"] = _write(directory)
    # The box's writable tmpfs mounts, past their size cap.
    for tmp in ("/tmp", "/dev/shm"):
        big = f"{tmp}/hostile-big"
        try:
            with open(big, "wb") as f:
                chunk = b"x" * (1 << 20)
                for _ in range(int(args["tmp_mib"]) + 64):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            attempts[f"write past the {tmp} size cap"] = f"SUCCEEDED: wrote {args['tmp_mib'] + 64} MiB to {tmp}"
        except OSError as exc:
            attempts[f"write past the {tmp} size cap"] = _refused(exc)
        finally:
            try:
                os.unlink(big)
            except OSError:
                pass
    for name, port in args["tcp_ports"].items():
        attempts[f"connect tcp {name} (127.0.0.1:{port})"] = _tcp(int(port))
    for name, path in args["unix_sockets"].items():
        attempts[f"connect unix {name}"] = _unix(path)
    for target in args["signal_targets"]:
        for how, result in _signal(int(target["pid"]), target["marker"]).items():
            attempts[f"{how} {target['name']} pid {target['pid']}"] = result
    try:
        os.setuid(0)
        attempts["setuid(0)"] = "SUCCEEDED: setuid(0)"
    except OSError as exc:
        attempts["setuid(0)"] = _refused(exc)
    status = _status_fields()
    attempts["run as root"] = (f"SUCCEEDED: uid {os.getuid()} euid {os.geteuid()}" if 0 in (os.getuid(), os.geteuid())
                               else f"refused: uid {os.getuid()}")
    attempts["keep capabilities"] = (f"SUCCEEDED: CapEff {status.get('CapEff')} CapBnd {status.get('CapBnd')}"
                                     if int(status.get("CapEff", "1"), 16) or int(status.get("CapBnd", "1"), 16)
                                     else "refused: CapEff and CapBnd are 0")
    attempts["gain privileges (no NoNewPrivs)"] = ("refused: NoNewPrivs 1" if status.get("NoNewPrivs") == "1"
                                                   else f"SUCCEEDED: NoNewPrivs {status.get('NoNewPrivs')}")
    attempts["supplementary groups"] = (f"SUCCEEDED: groups {os.getgroups()}" if os.getgroups()
                                        and os.getgroups() != [os.getgid()] else "refused: no other groups")
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    info = {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": os.getcwd(),
        "listings": listings,
        "hostname": socket.gethostname(),
        "environ": dict(os.environ),
        "processes": {str(p): _cmdline(p)[:200] for p in pids},
        "interfaces": [name for _, name in socket.if_nameindex()],
    }
    return {"attempts": attempts, "info": info}


def allocate(args: dict[str, Any]) -> Report:
    started = time.monotonic()
    block = b"\x01" * (int(args["mib"]) << 20)  # every page written
    return {"allocated_mib": len(block) >> 20, "seconds": time.monotonic() - started}


def fork_bomb(args: dict[str, Any]) -> Report:
    children: list[int] = []
    error = ""
    try:
        for _ in range(int(args["max"])):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
    return {"started": len(children), "error": error}


def thread_bomb(args: dict[str, Any]) -> Report:
    release = threading.Event()
    threads: list[threading.Thread] = []
    error = ""
    try:
        for _ in range(int(args["max"])):
            t = threading.Thread(target=release.wait, args=(60,), daemon=True)
            t.start()
            threads.append(t)
    except RuntimeError as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        release.set()
        for t in threads:
            t.join(10)
    return {"started": len(threads), "error": error}


def burn(args: dict[str, Any]) -> Report:
    seconds, n = float(args["seconds"]), int(args["processes"])
    started = time.monotonic()
    children = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            deadline = time.monotonic() + seconds
            x = 0
            while time.monotonic() < deadline:
                x += 1
            os._exit(0)
        children.append(pid)
    cpu = 0.0
    for pid in children:
        _, _, usage = os.wait4(pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
    return {"cpu_seconds": cpu, "wall_seconds": time.monotonic() - started, "processes": n}


STATUS_VARIANTS = {
    "garbage": lambda a: b"\x00\xff{{{ not json" * 1000,
    "huge": lambda a: json.dumps({"versions": {"1": {"state": "running", "last_exit": "x" * (3 << 20)}}}).encode(),
    "wrong_types": lambda a: json.dumps({
        "versions": {"1": {"state": ["running"], "pid": "1", "restarts": -5, "last_exit": {"a": 1},
                           "answering": "yes", "workers": 1e300, "old_groups": "everything"},
                     a["other_version"]: {"state": "running", "pid": 1},
                     "../../etc": {"state": "running"}},
        "host_pid": "nope", "updated": "tomorrow"}).encode(),
    "lies": lambda a: json.dumps({
        "versions": {"1": {"state": "running", "pid": int(a["foreign_pid"]), "restarts": 10 ** 12,
                           "last_exit": "<script>alert(1)</script>", "answering": True,
                           "workers": 3, "old_groups": [1, int(a["foreign_pid"])]}},
        "updated": 1e308}).encode(),
    "not_an_object": lambda a: b"[1, 2, 3]",
}


def _replace_with_symlink(path: str, target: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rename(path, f"{path}.moved-{time.time_ns()}")
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    os.symlink(target, path)


def tamper(args: dict[str, Any]) -> Report:
    how = args["how"]
    if how == "status":
        body = STATUS_VARIANTS[args["variant"]](args)
        state_dir, until = args["state_dir"], time.monotonic() + float(args["seconds"])

        def keep_writing() -> None:
            path = os.path.join(state_dir, "status.json")
            while time.monotonic() < until:
                tmp = f"{path}.hostile"
                try:
                    with open(tmp, "wb") as f:
                        f.write(body)
                    os.replace(tmp, path)
                except OSError:
                    pass
                time.sleep(0.05)

        threading.Thread(target=keep_writing, daemon=True).start()
        return {"tampering": args["variant"], "seconds": args["seconds"]}
    if how == "status_fifo":
        path = os.path.join(args["state_dir"], "status.json")
        os.unlink(path)
        os.mkfifo(path)
        return {"tampering": "fifo"}
    if how == "symlink":
        _replace_with_symlink(args["path"], args["target"])
        return {"symlinked": args["path"], "to": args["target"], "lstat": stat.filemode(os.lstat(args["path"]).st_mode)}
    raise ValueError(f"unknown tamper {how!r}")


def kill_box(args: dict[str, Any]) -> Report:
    """Kills the keeper (the box's first process of its own uid; bubblewrap's init, pid 1, is
    root's and also names keeper.py among its arguments)."""
    for name in os.listdir("/proc"):
        argv = _cmdline(int(name)).split(" ") if name.isdigit() else []
        if len(argv) > 1 and argv[1].endswith("keeper.py"):
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                continue
            return {"killed": int(name)}
    return {"killed": None}


ACTIONS = {"probe": probe, "allocate": allocate, "fork_bomb": fork_bomb, "thread_bomb": thread_bomb,
           "burn": burn, "tamper": tamper, "kill_box": kill_box, "ping": lambda a: {"ok": True}}


class Hostile(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    def predict(self, context: Any, model_input: Any, params: Any = None) -> list[str]:
        out = []
        for action, raw in zip(model_input["action"], model_input["args"], strict=True):
            args = json.loads(raw) if raw else {}
            try:
                report = ACTIONS[action](args)
            except Exception as exc:  # noqa: BLE001 - the report says what failed
                report = {"error": f"{type(exc).__name__}: {exc}", "errno": getattr(exc, "errno", None)
                          and errno.errorcode.get(exc.errno, "")}  # type: ignore[attr-defined]
            out.append(json.dumps(report))
        return out


set_model(Hostile())
