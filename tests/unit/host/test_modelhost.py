"""The model host's bookkeeping of scoring-server generations, without processes: which older
generation may be killed when, and which answers on the port count for the liveness probe."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.host import modelhost
from supervisor.host.modelhost import RETIRE_GRACE, Child


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def killed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    monkeypatch.setattr(modelhost, "signal_group", lambda group, sig: out.append((group, sig)) or True)
    return out


def replacement(old_group: int = 500) -> Child:
    child = Child("1", {"argv": ["python", "server.py", "--workers", "2"], "log": "/dev/null"})
    child.pid, child.state, child.old_groups = 600, "running", [old_group]
    return child


def test_an_older_generation_is_never_killed_while_its_replacement_still_loads(
        killed: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(modelhost.time, "monotonic", clock)
    child = replacement()
    loading = {500: [501, 502], 600: [600]}  # the orphaned workers serve; the new parent has no worker yet
    for _ in range(10):
        clock.now += RETIRE_GRACE
        child.tend_old_groups(loading)
    assert killed == [] and child.old_groups == [500]
    serving = {500: [501, 502], 600: [600, 601, 602]}
    child.tend_old_groups(serving)  # took over now
    clock.now += RETIRE_GRACE - 1
    child.tend_old_groups(serving)
    assert killed == []
    clock.now += 2
    child.tend_old_groups(serving)
    assert killed == [(500, modelhost.signal.SIGKILL)]


def test_an_older_generation_that_left_is_forgotten(killed: list[Any]) -> None:
    child = replacement()
    child.tend_old_groups({600: [600, 601]})
    assert child.old_groups == [] and killed == []


def test_while_an_older_generation_answers_the_port_the_probe_judges_nothing(
        killed: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    child = replacement()
    child.spec["liveness"] = {"socket": "/nonexistent/1.sock", "seconds": 1.0}
    monkeypatch.setattr(modelhost, "has_workers", lambda pid: False)
    monkeypatch.setattr(modelhost, "ping_socket", lambda path, timeout: True)
    assert child.probe() is False and child.answered_at is None  # the orphans answered, not it
    monkeypatch.setattr(modelhost, "has_workers", lambda pid: True)
    assert child.probe() is True and child.answered_at is not None


# --- files the model's own code may have replaced -------------------------------------------------
def test_a_state_file_that_is_a_fifo_is_refused_at_once(tmp_path: Any) -> None:
    import os

    fifo = tmp_path / "status.json"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        modelhost.read_state_file(fifo)  # would block forever with a plain open()
    (tmp_path / "real").write_text('{"a": 1}')
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError):
        modelhost.read_state_file(tmp_path / "link")
    assert modelhost.read_state_file(tmp_path / "real") == '{"a": 1}'


def test_a_new_host_of_a_state_dir_with_a_fifo_status_starts(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    monkeypatch.setattr(signal, "signal", lambda *_: None)  # the host's handlers are not the test's
    os.mkfifo(tmp_path / "status.json")
    host = modelhost.Host(tmp_path, tmp_path / "spec.json")
    assert host.previous == {}


def test_a_version_log_replaced_by_a_fifo_or_a_link_is_made_a_log_again(tmp_path: Any) -> None:
    import os

    log = tmp_path / "1.log"
    os.mkfifo(log)
    with modelhost.open_log(log) as f:
        f.write(b"first\n")
    secret = tmp_path / "secret"
    secret.write_text("keep")
    log.unlink()
    log.symlink_to(secret)
    with modelhost.open_log(log) as f:
        f.write(b"second\n")
    assert log.read_bytes() == b"second\n" and not log.is_symlink() and secret.read_text() == "keep"
    with modelhost.open_log(log) as f:
        f.write(b"third\n")
    assert log.read_bytes() == b"second\nthird\n"
