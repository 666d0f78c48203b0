"""Inference rows in the store: a replayed batch adds nothing, pending records and the position commit together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from supervisor.store import INFERENCE_COLUMNS, Store


def rid(n: int) -> str:
    return f"{n:032x}"


def row(n: int, endpoint_id: str = "e1", at: int = 1000) -> dict[str, Any]:
    return {"request_id": rid(n), "endpoint_id": endpoint_id, "endpoint": "ep", "served_entity": "iris-1",
            "model": "iris", "version": "1", "date": "2026-12-04", "timestamp_ms": at + n, "status_code": 200,
            "execution_time_ms": 5, "sampling_fraction": 1.0, "client_request_id": None, "request": "{}",
            "request_size": 2, "request_truncated": False, "response": "[]", "response_size": 2,
            "response_truncated": False}


def test_a_replayed_batch_adds_no_row_and_the_position_is_saved_with_it(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path}/s.db")
    assert s.commit_capture([row(1), row(2)], [], [], "capture", '{"offset": 10}') == 2
    assert s.commit_capture([row(2), row(3)], [], [], "capture", '{"offset": 20}') == 1
    again = Store(f"sqlite:///{tmp_path}/s.db")  # as after a restart
    assert [r["request_id"] for r in again.inference_rows("e1")] == [rid(1), rid(2), rid(3)]
    assert again.get_meta("capture") == '{"offset": 20}'
    assert set(next(again.inference_rows("e1"))) == set(INFERENCE_COLUMNS)


def test_pending_records_are_added_replaced_and_dropped_in_the_same_commit(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path}/s.db")
    s.commit_capture([], [("up", rid(1), 3, "one"), ("up", rid(2), 9, None)], [], "capture", "a")
    s.commit_capture([row(1)], [("up", rid(2), 9, "again")], [("up", rid(1))], "capture", "b")
    assert [(u, r, size, body) for u, r, size, body, _ in s.capture_pending()] == [("up", rid(2), 9, "again")]


def test_rows_are_read_per_endpoint_in_pages_from_a_time_on_and_expire(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path}/s.db")
    s.commit_capture([row(n) for n in range(1200)] + [row(5000, "e2")], [], [], "capture", "x")
    assert len(list(s.inference_rows("e1"))) == 1200
    assert [r["request_id"] for r in s.inference_rows("e1", since_ms=2195)] == [rid(n) for n in range(1195, 1200)]
    assert len(list(s.inference_rows("e1", limit=700))) == 700
    assert s.delete_inference_rows(before_ms=1600) == 600
    assert len(list(s.inference_rows("e1"))) == 600 and len(list(s.inference_rows("e2"))) == 1


def test_deleting_an_endpoint_deletes_its_rows(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path}/s.db")
    cfg = {"served_entities": [], "traffic_config": {"routes": []}}
    ep = s.create_endpoint("e1", "ep", "alice", cfg, [], False)
    assert ep is not None
    s.commit_capture([row(1), row(2, "e2")], [], [], "capture", "x")
    assert s.delete_endpoint("ep")
    assert list(s.inference_rows("e1")) == [] and len(list(s.inference_rows("e2"))) == 1
