"""Stopping the whole system: a foreground ``modelserve up`` stops its model hosts on a stop
signal, even while starting, and ``modelserve down`` says what it found left running.

The runtime is faked (it only has to say which hosts run and record which were stopped); the
supervisor's processes and Nginx are stood in for by ``sleep`` processes, so that the signals
sent are real without starting the system.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import launcher as launcher_mod
from supervisor import stopping
from supervisor.launcher import Launcher, down
from supervisor.runtime.base import HostState, VersionProcess
from supervisor.settings import Settings
from supervisor.stopping import Leftovers, StopSignals, down_message, tolerant


class FakeRuntime:
    """Hosts by name: True when the host runs, "servers" when only its scoring servers do
    (they outlive a killed host), False when nothing of it runs."""

    def __init__(self, hosts: dict[str, bool | str]) -> None:
        self.running = hosts
        self.stopped: list[str] = []

    def hosts(self) -> list[str]:
        return [m for m in self.running if m not in self.stopped]

    def host_state(self, model: str) -> HostState | None:
        how = self.running[model]
        return HostState(model=model, alive=how is True,
                         versions={"1": VersionProcess(version="1", running=bool(how))})

    def stop_host(self, model: str) -> None:
        self.stopped.append(model)


@pytest.fixture(autouse=True)
def embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MODELSERVE_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def keep_signal_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in stopping.STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    fake = FakeRuntime({"iris": True, "wine": "servers", "dead": False})
    monkeypatch.setattr(stopping, "make_runtime", lambda settings: fake)
    return fake


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    # pytest's own temporary paths (popen-gwN/test_<name>0/) are too long for socket paths.
    sockets = Path(tempfile.mkdtemp(prefix="ms-", dir="/tmp"))
    s = Settings(data_dir=tmp_path, auth=False, nginx_bin=sys.executable, socket_dir=sockets)
    s.run_dir.mkdir(parents=True)
    yield s
    shutil.rmtree(sockets, ignore_errors=True)


def sleeper() -> subprocess.Popen[bytes]:
    # Its own process group, like each supervisor process and Nginx.
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def gone(proc: subprocess.Popen[bytes]) -> bool:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return False
    return True


def test_stop_model_hosts_stops_all_and_counts_the_running(settings: Settings, runtime: FakeRuntime) -> None:
    assert stopping.stop_model_hosts(settings) == 2
    assert runtime.stopped == ["iris", "wine", "dead"]


def test_down_without_a_launcher_says_what_it_stopped(settings: Settings, runtime: FakeRuntime) -> None:
    api, nginx = sleeper(), sleeper()
    settings.nginx_dir.mkdir(parents=True, exist_ok=True)
    (settings.nginx_dir / "nginx.pid").write_text(str(nginx.pid))
    dead_launcher = subprocess.Popen(["true"])
    dead_launcher.wait()
    (settings.run_dir / "up.json").write_text(json.dumps(
        {"launcher_pid": dead_launcher.pid, "children": {"api": api.pid}, "gateway": "x", "started": 0}))
    said: list[str] = []
    assert down(settings, echo=said.append) is False
    assert said == ["modelserve was not running; stopped the gateway, 1 supervisor process and "
                    "2 model hosts left running"]
    assert gone(api) and gone(nginx) and runtime.stopped == ["iris", "wine", "dead"]
    assert not (settings.run_dir / "up.json").exists()


def test_down_with_nothing_left(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stopping, "make_runtime", lambda settings: FakeRuntime({"dead": False}))
    said: list[str] = []
    assert down(settings, echo=said.append) is False
    assert said == ["modelserve was not running"]


def test_down_finishes_the_stop_of_a_launcher_it_had_to_kill(settings: Settings, runtime: FakeRuntime) -> None:
    # A launcher stuck in its stop: it ignores SIGTERM (the ignored disposition survives exec).
    stuck = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 60"])
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{stuck.pid}/cmdline").read_bytes().startswith(b"sleep") and time.monotonic() < deadline:
        time.sleep(0.01)  # until the trap is set: a SIGTERM before it would simply end the shell
    (settings.run_dir / "up.json").write_text(json.dumps(
        {"launcher_pid": stuck.pid, "children": {}, "gateway": "x", "started": 0}))
    said: list[str] = []
    assert down(settings, echo=said.append, timeout=1.0) is True
    assert gone(stuck)
    assert said == ["modelserve stopped (its launcher did not stop within 1 s and was killed; "
                    "stopped 2 model hosts it left running)"]


def test_a_stop_signal_while_starting_stops_what_started(settings: Settings, runtime: FakeRuntime,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    launcher = Launcher(settings, echo=said.append)
    started: list[subprocess.Popen[bytes]] = []

    def spawn(child: launcher_mod.Child) -> None:
        child.proc = sleeper()
        started.append(child.proc)
        # Ctrl-C while the first process (MLflow) is starting.
        launcher.signals.handle(signal.SIGINT)

    monkeypatch.setattr(launcher, "_spawn", spawn)
    with pytest.raises(SystemExit, match="stopped before it was up"):
        launcher.start()
    assert len(started) == 1 and gone(started[0])
    assert runtime.stopped == ["iris", "wine", "dead"]
    assert said[-1] == "modelserve stopped (2 model hosts stopped)"
    assert not (settings.run_dir / "up.json").exists()


def test_watch_stops_everything_on_a_stop_signal(settings: Settings, runtime: FakeRuntime) -> None:
    said: list[str] = []
    launcher = Launcher(settings, echo=said.append)
    proc = sleeper()
    launcher.children = [launcher_mod.Child("api", ["sleep"], settings.logs_dir / "api.log", None, proc=proc)]
    launcher.signals.requested = True
    launcher.watch()
    assert signal.getsignal(signal.SIGTERM) == launcher.signals.handle
    assert gone(proc) and runtime.stopped == ["iris", "wine", "dead"]
    assert said == ["stopping modelserve: the gateway, api, then every model host ...",
                    "modelserve stopped (2 model hosts stopped)"]


def test_a_closed_terminal_does_not_abort_the_stop(settings: Settings, runtime: FakeRuntime) -> None:
    def broken(_: str) -> None:
        raise BrokenPipeError

    launcher = Launcher(settings, echo=broken)
    launcher.stop()
    assert runtime.stopped == ["iris", "wine", "dead"]
    tolerant(broken)("nothing raised")


def test_stop_signals() -> None:
    notices: list[str] = []
    signals = StopSignals(notice=notices.append)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    signals.install()
    assert signal.getsignal(signal.SIGINT) == signals.handle
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    signals.handle(signal.SIGINT)
    assert signals.requested and notices == []
    signals.handle(signal.SIGINT)
    signals.handle(signal.SIGTERM)
    assert len(notices) == 1 and "wait for 'modelserve stopped'" in notices[0]


def test_down_messages() -> None:
    assert down_message(False, Leftovers()) == "modelserve was not running"
    assert down_message(False, Leftovers(model_hosts=1)) == "modelserve was not running; stopped 1 model host left running"
    assert down_message(False, Leftovers(processes=2, model_hosts=3)) == (
        "modelserve was not running; stopped 2 supervisor processes and 3 model hosts left running")
    assert down_message(True, Leftovers()) == "modelserve stopped"
    assert down_message(True, Leftovers(), killed_after=60) == (
        "modelserve stopped (its launcher did not stop within 60 s and was killed)")


def test_in_compose_a_stop_leaves_the_gateway_and_the_models_serving(settings: Settings,
                                                                    runtime: FakeRuntime) -> None:
    """compose.yaml's supervisor is stopped for a restart as for `down`: the gateway (another
    container's Nginx) and the model containers go on serving; `docker compose down` stops them."""
    nginx = sleeper()
    settings.nginx_dir.mkdir(parents=True, exist_ok=True)
    (settings.nginx_dir / "nginx.pid").write_text(str(nginx.pid))
    said: list[str] = []
    launcher = Launcher(settings.model_copy(update={"compose": True}), echo=said.append)
    api = sleeper()
    launcher.children = [launcher_mod.Child("api", ["sleep"], settings.logs_dir / "api.log", None, proc=api)]
    launcher.signals.requested = True
    launcher.watch()
    try:
        assert gone(api) and runtime.stopped == []
        assert nginx.poll() is None, "the gateway's Nginx was stopped"
        assert said == ["stopping modelserve: api ...", "  the gateway and the model containers keep serving",
                        "modelserve stopped"]
    finally:
        nginx.kill()
        nginx.wait()


def test_a_launcher_left_in_up_json_is_running_only_outside_compose(settings: Settings) -> None:
    """Embedded: a live pid in up.json means another `up` serves this data dir. In compose a
    container's pids are its own: the killed supervisor's pid 1 is the next container's own pid,
    and `down` + `up` of the stack then refused to start (found by tests/e2e/test_compose.py)."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / "up.json").write_text(json.dumps({"launcher_pid": os.getpid(), "gateway": "g"}))
    assert launcher_mod.already_running(settings) is not None
    assert launcher_mod.already_running(settings.model_copy(update={"compose": True})) is None
