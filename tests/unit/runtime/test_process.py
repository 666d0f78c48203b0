"""The process runtime and the model host with real processes: start, crash, restart, adopt, stop.

A tiny stand-in scoring server (an http.server answering /ping) replaces the real one, so these
tests need no model environment."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.capture.spool import spool_path
from supervisor.isolation.box import Box
from supervisor.runtime import process, sockets
from supervisor.runtime.base import VersionLaunch
from supervisor.runtime.process import ProcessRuntime, host_is_alive
from supervisor.settings import Settings
from tests.support import process_alive, wait_until

BOX = Box(uid=None, gid=None, memory_bytes=1 << 30, cpus=2.0, pids=512, tmp_bytes=64 << 20)

STAND_IN = '''
import argparse, http.server, os, socketserver, time
p = argparse.ArgumentParser(); p.add_argument("--model-dir"); p.add_argument("--socket"); p.add_argument("--workers"); p.add_argument("--batching"); p.add_argument("--handoff-dir"); p.add_argument("--capture-spool")
a = p.parse_args()
if "slow" in a.model_dir:
    time.sleep(3)  # a model that takes long to load
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = a.model_dir.encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *x): pass
class S(socketserver.UnixStreamServer):
    def server_bind(self):
        if os.path.exists(a.socket):
            os.unlink(a.socket)
        super().server_bind()
print("stand-in listening on", a.socket, flush=True)
S(a.socket, H).serve_forever()
'''


def wait(what: str, cond: Callable[[], Any], timeout: float = 20.0) -> Any:
    return wait_until(what, cond, timeout, every=0.1)


def ping(path: Path) -> str | None:
    """The stand-in's answer on its Unix socket: the model dir it serves."""
    try:
        status, body = sockets.request(sockets.upstream(path), "GET", "/ping", timeout=1)
    except (OSError, http.client.HTTPException):
        return None
    return body.decode() if status == 200 else None


alive = process_alive


@pytest.fixture()
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ProcessRuntime]:
    stand_in = tmp_path / "stand_in.py"
    stand_in.write_text(STAND_IN)
    monkeypatch.setattr(process, "SCORING_SERVER", stand_in)
    # The host's own behaviour, unboxed (the box is tested in test_process_box.py).
    rt = ProcessRuntime(Settings(data_dir=tmp_path / "data", sandbox="off"))
    yield rt
    for model in rt.hosts():
        rt.stop_host(model)


def launch(version: str) -> VersionLaunch:
    return VersionLaunch(version=version, python=Path(sys.executable), model_dir=Path(f"/models/v{version}"),
                         port=20000, env_hash="h")


def test_host_runs_versions_restarts_a_killed_one_and_keeps_the_other(runtime: ProcessRuntime) -> None:
    p1, p2 = runtime.socket_path("m o/d'el", "1"), runtime.socket_path("m o/d'el", "2")
    runtime.apply_host("m o/d'el", [launch("1"), launch("2")], BOX)
    assert wait("v1", lambda: ping(p1)) == "/models/v1"
    assert wait("v2", lambda: ping(p2)) == "/models/v2"
    state = wait("status", lambda: (s := runtime.host_state("m o/d'el")) and len(s.versions) == 2 and s)
    assert state.alive and all(v.running for v in state.versions.values())
    v1_pid, v2_pid = state.versions["1"].pid, state.versions["2"].pid

    os.kill(v1_pid, signal.SIGKILL)
    restarted = wait("v1 restarted", lambda: (s := runtime.host_state("m o/d'el")) and s.versions["1"].restarts == 1
                     and s.versions["1"].running and s)
    assert "SIGKILL" in (restarted.versions["1"].last_exit or "")
    assert restarted.versions["1"].pid != v1_pid
    assert wait("v1 answers again", lambda: ping(p1)) == "/models/v1"
    assert restarted.versions["2"].pid == v2_pid
    assert "attempt 2" in runtime.version_log("m o/d'el", "1")


def test_a_hung_version_is_killed_and_restarted_but_a_loading_one_is_left_alone(
        runtime: ProcessRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime.settings.liveness_seconds = 1.0
    hung, slow = runtime.socket_path("m", "1"), runtime.socket_path("m", "slow")
    # A proxy meant for the model's own calls must not swallow the host's pings.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    runtime.apply_host("m", [launch("1"), launch("slow")], BOX)
    monkeypatch.delenv("http_proxy")
    status = runtime.state_dir("m") / "status.json"
    pid = wait("v1 answering the host", lambda: (s := json.loads(status.read_text()) if status.exists() else None)
               and s["versions"]["1"].get("answering") and s["versions"]["1"]["pid"])
    os.kill(pid, signal.SIGSTOP)  # alive, holding its port, answering nothing
    state = wait("v1 restarted", lambda: (s := runtime.host_state("m")) and s.versions["1"].restarts == 1
                 and s.versions["1"].running and s)
    assert "did not answer /ping" in (state.versions["1"].last_exit or "")
    assert wait("the hung one gone", lambda: not alive(pid)) and state.versions["1"].pid != pid
    assert wait("v1 answers again", lambda: ping(hung)) == "/models/v1"
    # Silent for 3 s while loading, three windows: it never answered yet, so it is not judged.
    assert wait("slow one loaded", lambda: ping(slow)) == "/models/vslow"
    assert runtime.host_state("m").versions["slow"].restarts == 0  # type: ignore[union-attr]
    assert "did not answer /ping" in (runtime.model_dir("m") / "host.log").read_text()


def test_removing_a_version_stops_only_it(runtime: ProcessRuntime) -> None:
    p1, p2 = runtime.socket_path("m", "1"), runtime.socket_path("m", "2")
    runtime.apply_host("m", [launch("1"), launch("2")], BOX)
    wait("both", lambda: ping(p1) and ping(p2))
    v2_pid = wait("pids", lambda: (s := runtime.host_state("m")) and s.versions.get("2") and s.versions["2"].pid)
    runtime.apply_host("m", [launch("2")], BOX)
    wait("v1 gone", lambda: ping(p1) is None)
    state = wait("status", lambda: (s := runtime.host_state("m")) and set(s.versions) == {"2"} and s)
    assert state.versions["2"].pid == v2_pid


def test_a_killed_host_leaves_its_servers_serving_and_the_new_host_adopts_them(runtime: ProcessRuntime) -> None:
    port = runtime.socket_path("m", "1")
    runtime.apply_host("m", [launch("1")], BOX)
    wait("v1", lambda: ping(port))
    state = wait("status", lambda: (s := runtime.host_state("m")) and s.versions.get("1") and s)
    host_pid, child_pid = state.pid, state.versions["1"].pid
    os.kill(host_pid, signal.SIGKILL)
    dead = wait("host seen dead", lambda: (s := runtime.host_state("m")) and not s.alive and s)
    assert str(host_pid) in (dead.reason or "")
    # The host is not on the serving path: its server goes on answering, and says it runs.
    assert alive(child_pid) and ping(port) == "/models/v1" and dead.versions["1"].running
    runtime.apply_host("m", [launch("1")], BOX)
    host_log = runtime.model_dir("m") / "host.log"
    wait("adopted by the new host", lambda: "adopted its running scoring server" in host_log.read_text())
    adopted = runtime.host_state("m")
    assert adopted is not None and adopted.alive and adopted.pid != host_pid
    assert adopted.versions["1"].pid == child_pid and adopted.versions["1"].running
    # An adopted server that dies is restarted by its new host, which never saw its exit status.
    os.kill(child_pid, signal.SIGKILL)
    again = wait("restarted", lambda: (s := runtime.host_state("m")) and s.versions["1"].restarts == 1
                 and s.versions["1"].running and s)
    assert again.versions["1"].pid != child_pid and "status is unknown" in (again.versions["1"].last_exit or "")
    assert wait("served again", lambda: ping(port)) == "/models/v1"


def test_stopping_a_model_whose_host_was_killed_stops_its_servers(runtime: ProcessRuntime) -> None:
    port = runtime.socket_path("m", "1")
    runtime.apply_host("m", [launch("1")], BOX)
    wait("v1", lambda: ping(port))
    state = wait("status", lambda: (s := runtime.host_state("m")) and s.versions.get("1") and s)
    os.kill(state.pid, signal.SIGKILL)  # type: ignore[arg-type]
    wait("host seen dead", lambda: (s := runtime.host_state("m")) and not s.alive)
    runtime.stop_host("m")
    assert wait("its server gone", lambda: not alive(state.versions["1"].pid))
    assert runtime.hosts() == []


def test_a_new_runtime_adopts_running_hosts(runtime: ProcessRuntime) -> None:
    port = runtime.socket_path("adopt me", "1")
    runtime.apply_host("adopt me", [launch("1")], BOX)
    wait("v1", lambda: ping(port))
    pid = runtime.host_state("adopt me").pid  # type: ignore[union-attr]
    again = ProcessRuntime(runtime.settings)
    assert again.hosts() == ["adopt me"]
    state = again.host_state("adopt me")
    assert state is not None and state.alive and state.pid == pid


def test_stop_host_leaves_nothing(runtime: ProcessRuntime) -> None:
    port = runtime.socket_path("m", "1")
    runtime.apply_host("m", [launch("1")], BOX)
    wait("v1", lambda: ping(port))
    state = wait("status", lambda: (s := runtime.host_state("m")) and s.versions.get("1") and s)
    runtime.stop_host("m")
    assert not alive(state.pid) and not alive(state.versions["1"].pid)
    assert runtime.hosts() == [] and runtime.host_state("m") is None
    runtime.stop_host("m")  # idempotent


def test_pid_reuse_is_not_mistaken_for_our_host(tmp_path: Path) -> None:
    # Our own pid is alive but is not a model host for that state dir.
    assert not host_is_alive(os.getpid(), tmp_path)
    settings = Settings(data_dir=tmp_path)
    rt = ProcessRuntime(settings)
    d = rt.model_dir("m")
    d.mkdir(parents=True)
    (d / "host.json").write_text(json.dumps({"model": "m", "pid": os.getpid()}))
    state = rt.host_state("m")
    assert state is not None and not state.alive


def test_groups_named_by_a_stale_status_file_are_left_alone_unless_they_serve_this_host(
        runtime: ProcessRuntime) -> None:
    import subprocess

    # After a reboot, the numbers in an old status.json may belong to anything: here, a process
    # group of its own that is no scoring server of this host.
    stranger = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        d = runtime.state_dir("m")
        (d / "versions").mkdir(parents=True)
        (d / "status.json").write_text(json.dumps({"host_pid": 1, "versions": {
            "1": {"pid": stranger.pid, "old_groups": [stranger.pid]},
            "gone": {"pid": stranger.pid, "old_groups": [stranger.pid]}}}))
        port = runtime.socket_path("m", "1")
        runtime.apply_host("m", [launch("1")], BOX)
        assert wait("v1", lambda: ping(port)) == "/models/v1"
        wait("the host's first report", lambda: json.loads((d / "status.json").read_text())["host_pid"] != 1)
        assert json.loads((d / "status.json").read_text())["versions"]["1"]["old_groups"] == []
        runtime.stop_host("m")
        assert alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


def test_each_version_is_told_its_capture_spool_in_a_folder_of_its_model(runtime: ProcessRuntime) -> None:
    argv = runtime.spec("iris", [launch("1")])["versions"]["1"]["argv"]
    spool = Path(argv[argv.index("--capture-spool") + 1])
    assert spool == spool_path(runtime.settings.spool_dir.resolve(), "iris", "1")
    assert spool.parent == runtime.spool_dir("iris") != runtime.spool_dir("other")
