"""The ingester with real files and a real store: lines and records joined across polls and
restarts, a crash at any point neither losing nor repeating a row, forged records dropped."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor import naming
from supervisor.capture import ingester
from supervisor.capture.ingester import PENDING_SECONDS, STATE_KEY, Ingester
from supervisor.capture.spool import spool_path
from supervisor.scoring.spool import SpoolWriter
from supervisor.settings import Settings
from supervisor.store import READY, Store

NOW = time.time()


def rid(n: int) -> str:
    return f"{n:032x}"


class System:
    def __init__(self, tmp_path: Path) -> None:
        self.settings = Settings(data_dir=tmp_path)
        self.settings.nginx_dir.mkdir(parents=True)
        self.store = Store(f"sqlite:///{tmp_path / 's.db'}")
        ep = self.store.create_endpoint("ep-id", "ep", "boss", {"served_entities": []}, [], False)
        assert ep is not None
        for version in ("1", "2"):
            self.store.upsert_deployment("iris", version, state=READY)
            spool_path(self.settings.spool_dir, "iris", version).parent.mkdir(parents=True, exist_ok=True)
        self.writers = {v: SpoolWriter(str(spool_path(self.settings.spool_dir, "iris", v))) for v in ("1", "2")}

    def ingester(self) -> Ingester:
        return Ingester(self.settings, self.store, reopen=lambda: True)

    def answer(self, n: int, version: str = "1", body: str = '{"predictions": [0]}') -> None:
        """What the scoring server does for a sampled request: the record before the answer."""
        assert self.writers[version].append(rid(n), body.encode())

    def logged(self, n: int, version: str = "1", **over: Any) -> None:
        """What Nginx writes once the answer is sent."""
        line = {"i": rid(n), "t": NOW + n, "s": 200, "d": 0.01, "m": "0.008", "e": "ep",
                "n": f"iris-{version}", "x": naming.upstream_name("iris", version), "l": "",
                "b": json.dumps({"inputs": [[n]], "client_request_id": f"c{n}"}), "f": "1", **over}
        with self.settings.capture_log.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        return list(self.store.inference_rows("ep-id"))


def test_rows_join_across_polls_and_restarts(tmp_path: Path) -> None:
    s = System(tmp_path)
    ing = s.ingester()
    s.answer(1)
    s.logged(1)
    s.answer(2)  # answered, but Nginx has not logged it yet
    assert ing.poll() == 1
    assert [(r["request_id"], r["client_request_id"], r["response"]) for r in s.rows()] == [
        (rid(1), "c1", '{"predictions": [0]}')]
    assert [p[1] for p in s.store.capture_pending()] == [rid(2)]
    assert list(s.settings.spool_dir.rglob("*.retired-*")) == []  # committed, so deleted
    s.logged(2)
    assert s.ingester().poll() == 1  # a new ingester (a restarted reconciler) finds the pending record
    assert [r["response"] for r in s.rows()] == ['{"predictions": [0]}'] * 2
    assert s.store.capture_pending() == []


def test_a_crash_before_the_commit_loses_nothing_and_a_replay_repeats_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = System(tmp_path)
    for n in range(5):
        s.answer(n)
        s.logged(n)
    crashing = s.ingester()

    def killed(*args: Any, **kwargs: Any) -> int:
        raise KeyboardInterrupt("killed before the commit")

    monkeypatch.setattr(crashing.store, "commit_capture", killed)
    with pytest.raises(KeyboardInterrupt):
        crashing.poll()
    monkeypatch.undo()
    assert len(list(s.settings.spool_dir.rglob("*.retired-*"))) == 1  # read, not committed: kept
    assert s.ingester().poll() == 5
    assert [r["request_id"] for r in s.rows()] == [rid(n) for n in range(5)]
    assert all(r["response"] for r in s.rows())
    # The offset is committed with the rows; a replay from an older one adds nothing (the key).
    s.store.set_meta(STATE_KEY, json.dumps({"inode": 0, "offset": 0}))
    assert s.ingester().poll() == 0
    assert len(s.rows()) == 5


def test_a_crash_between_the_commit_and_deleting_the_spool_repeats_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = System(tmp_path)
    s.answer(1)
    s.logged(1)
    crashing = s.ingester()
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: (_ for _ in ()).throw(
        KeyboardInterrupt("killed before the delete")))
    with pytest.raises(KeyboardInterrupt):
        crashing.poll()
    monkeypatch.undo()
    assert len(s.rows()) == 1 and len(list(s.settings.spool_dir.rglob("*.retired-*"))) == 1
    assert s.ingester().poll() == 0  # the file is read again; its line was consumed: no second row
    assert len(s.rows()) == 1 and list(s.settings.spool_dir.rglob("*.retired-*")) == []


def test_records_are_taken_only_from_the_routed_versions_spool_and_forgeries_expire(tmp_path: Path) -> None:
    s = System(tmp_path)
    s.answer(1, version="2", body="forged by version 2")  # version 2 claims a request routed to 1
    s.answer(99, version="2", body="no such request")
    s.logged(1, version="1", s=502, m="-")  # version 1 died: no record of its own
    ing = s.ingester()
    assert ing.poll() == 1
    (row,) = s.rows()
    assert (row["status_code"], row["response"], row["model"], row["version"]) == (502, None, "iris", "1")
    assert sorted(p[1] for p in s.store.capture_pending()) == [rid(1), rid(99)]
    ing.poll(now=time.time() + PENDING_SECONDS + 60)
    assert s.store.capture_pending() == []


def test_retention_deletes_old_rows(tmp_path: Path) -> None:
    s = System(tmp_path)
    s.logged(1)
    ing = s.ingester()
    ing.poll(now=NOW + 29 * 86400)  # within the 30 days: kept
    assert len(s.rows()) == 1
    ing.last_retention = 0
    ing.poll(now=NOW + 31 * 86400)
    assert s.rows() == []


def test_a_model_flooding_its_spool_crowds_out_only_its_own_waiting_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingester, "MAX_PENDING", 3)
    s = System(tmp_path)
    for n in range(100, 110):
        s.answer(n, version="2", body="junk")  # no request: version 2 floods
    s.answer(1, version="1")  # answered, its line not written yet
    ing = s.ingester()
    ing.poll()
    waiting = [(up, rid) for up, rid, *_ in s.store.capture_pending()]
    assert (naming.upstream_name("iris", "1"), rid(1)) in waiting
    assert sum(up == naming.upstream_name("iris", "2") for up, _ in waiting) == 3
    s.logged(1)
    ing.poll()
    assert [r["response"] for r in s.rows()] == ['{"predictions": [0]}']
