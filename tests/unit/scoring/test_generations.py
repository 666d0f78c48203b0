"""A version's scoring server losing any one process under steady load: a worker, then its
parent (the workers go on serving; a new generation takes their socket over and retires them).
Real server processes, a real model, requests counted one by one; each kill may cost at most the
requests in flight inside the killed process (one per load thread)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from supervisor.runtime import sockets
from tests.support import process_alive, wait_until
from tests.unit.scoring.conftest import COLS, SERVER

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
LOAD_THREADS = 3


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


alive = process_alive


def wait(what: str, cond: Any, timeout: float = 120.0) -> Any:
    return wait_until(what, cond, timeout, every=0.05)


class Load:
    """Sequential requests from a few threads, each on a new connection, every outcome kept."""

    def __init__(self, url: str, expected: list[Any]) -> None:
        self.url, self.expected = url, expected
        self.stop = threading.Event()
        self.outcomes: list[tuple[float, str]] = []  # (sent at, "ok" or why not)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(LOAD_THREADS)]

    def _run(self) -> None:
        body = {"dataframe_split": pd.DataFrame(ROWS, columns=COLS).to_dict(orient="split")}
        deadline = time.monotonic() + 600  # bounded whatever happens to the test
        while not self.stop.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            try:
                status, answer = sockets.request(self.url, "POST", "/invocations", json.dumps(body).encode(),
                                                 {"Content-Type": "application/json"}, timeout=30)
                ok = status == 200 and json.loads(answer) == {"predictions": self.expected}
                why = "ok" if ok else f"{status} {answer[:100]!r}"
            except (OSError, http.client.HTTPException) as exc:
                why = type(exc).__name__
            with self.lock:
                self.outcomes.append((sent, why))
            time.sleep(0.005)

    def failures_since(self, t: float) -> list[str]:
        with self.lock:
            return [why for sent, why in self.outcomes if sent >= t and why != "ok"]

    def count_since(self, t: float) -> int:
        with self.lock:
            return len([1 for sent, _ in self.outcomes if sent >= t])


@pytest.fixture()
def saved_model(model: tuple[str, Any], tmp_path: Path) -> tuple[Path, list[Any]]:
    import mlflow.sklearn

    _, clf = model
    model_dir = tmp_path / "model"
    mlflow.sklearn.save_model(clf, str(model_dir))
    return model_dir, clf.predict(pd.DataFrame(ROWS, columns=COLS)).tolist()


def start(model_dir: Path, where: Path, handoff: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # Its own group, as the model host starts it: the test's kills aim at one process only.
        return subprocess.Popen([sys.executable, str(SERVER), "--model-dir", str(model_dir), "--socket", str(where),
                                 "--workers", "2", "--handoff-dir", str(handoff)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture()
def groups() -> Iterator[list[int]]:
    started: list[int] = []
    yield started
    for group in started:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass


def test_a_killed_worker_or_parent_costs_only_what_was_inside_it(
        saved_model: tuple[Path, list[Any]], tmp_path: Path, groups: list[int]) -> None:
    model_dir, expected = saved_model
    # Longer than a Unix socket's path may be (108 bytes), as a data dir and a model's name can make it.
    handoff = tmp_path / ("a-long-model-name-" * 6) / "versions" / "1.handoff"
    assert len(str(handoff / "1234567.sock")) > 108
    where, log = tmp_path / "1.sock", tmp_path / "server.log"
    first = start(model_dir, where, handoff, log)
    groups.append(first.pid)
    url = sockets.upstream(where)
    wait("the server answering", lambda: _pings(url))
    workers = wait("two workers", lambda: len(w := children_of(first.pid)) == 2 and w)
    load = Load(url, expected)
    for t in load.threads:
        t.start()
    try:
        wait("the load running", lambda: load.count_since(0) > 20)

        # 1. One worker: its parent forks a new one from the model it has loaded.
        t0 = time.monotonic()
        os.kill(workers[0], signal.SIGKILL)
        again = wait("a new worker", lambda: len(w := children_of(first.pid)) == 2 and workers[0] not in w and w)
        took = time.monotonic() - t0
        wait("requests after the refork", lambda: load.count_since(time.monotonic() - 0.5) > 5)
        lost = load.failures_since(t0)
        print(f"worker killed: {len(lost)} failed, full capacity again after {took * 1000:.0f} ms")
        assert len(lost) <= LOAD_THREADS, lost

        # 2. The parent: its workers go on serving alone, then a new generation takes over.
        t1 = time.monotonic()
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        time.sleep(1.0)  # the orphans serve alone meanwhile
        assert all(alive(w) for w in again)
        served_alone = load.count_since(t1)
        second = start(model_dir, where, handoff, log)
        groups.append(second.pid)
        wait("the new generation's workers", lambda: len(children_of(second.pid)) == 2)
        wait("the old workers retired", lambda: not any(alive(w) for w in again), timeout=60)
        took = time.monotonic() - t1
        wait("requests after the takeover", lambda: load.count_since(time.monotonic() - 0.5) > 5)
        lost = load.failures_since(t1)
        print(f"parent killed: {served_alone} answered by its orphaned workers, {len(lost)} failed, "
              f"the new generation alone after {took:.1f} s")
        assert len(lost) <= LOAD_THREADS, lost
        assert served_alone > 0
        assert "took over the listening socket from 2 worker(s)" in log.read_text()
    finally:
        load.stop.set()
        for t in load.threads:
            t.join(timeout=60)
    assert load.count_since(0) > 100


def test_a_server_with_nobody_to_take_over_from_binds_its_own_socket(
        saved_model: tuple[Path, list[Any]], tmp_path: Path, groups: list[int]) -> None:
    model_dir, _ = saved_model
    where, handoff, log = tmp_path / "1.sock", tmp_path / "handoff", tmp_path / "server.log"
    handoff.mkdir()
    (handoff / "999999999.sock").write_text("")  # left by a killed process: not a socket at all
    proc = start(model_dir, where, handoff, log)
    groups.append(proc.pid)
    wait("the server answering", lambda: _pings(sockets.upstream(where)))
    assert "bound a new listening socket" in log.read_text()
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert not list(handoff.glob("*.sock")) or [p.name for p in handoff.glob("*.sock")] == ["999999999.sock"]


def _pings(address: str) -> bool:
    return sockets.ping(address)
