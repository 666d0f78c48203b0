"""The store keeps enabled models, deployments and events across instances (restarts)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from supervisor.store import (
    LAUNCHING,
    MODEL_UPDATE,
    PENDING,
    VERSION_UPDATE,
    BoxSettings,
    Store,
    UidRangeExhausted,
)


@pytest.fixture()
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 's.db'}"


def test_everything_survives_a_new_store_instance(url: str) -> None:
    s = Store(url)
    assert s.enable("m") is True
    assert s.enable("m") is False
    s.add_event("m", MODEL_UPDATE, "Serving enabled")
    s.add_event("m", VERSION_UPDATE, "v1 pending", version="1")
    s.upsert_deployment("m", "1", state=PENDING, aliases=["b", "a"], stage="Staging")
    again = Store(url)
    assert again.enabled_models() == ["m"]
    assert [e.message for e in again.events("m")] == ["v1 pending", "Serving enabled"]
    assert [e.message for e in again.events("m", version="1")] == ["v1 pending"]
    d = again.deployment("m", "1")
    assert d is not None and d.state == PENDING and d.aliases == ["a", "b"] and d.stage == "Staging"


def test_ports_are_unique_and_stable(url: str) -> None:
    s = Store(url)
    for v in ("1", "2", "10"):
        s.upsert_deployment("m", v, state=LAUNCHING)
    p1 = s.allocate_port("m", "1", 100, 102)
    p2 = s.allocate_port("m", "2", 100, 102, is_free=lambda p: p != 101)
    assert (p1, p2) == (100, 102)
    assert s.allocate_port("m", "1", 100, 102) == p1
    with pytest.raises(RuntimeError):
        s.allocate_port("m", "10", 100, 102, is_free=lambda p: p != 101)
    assert [d.version for d in s.deployments("m")] == ["1", "2", "10"]


def test_versions_deployed_at_once_get_different_ports(url: str) -> None:
    # Deploy threads of one model choose ports at the same moment (seen in the churn suite: the
    # second version FAILED with "UNIQUE constraint failed: deployments.port").
    stores = [Store(url) for _ in range(8)]
    for v in range(8):
        stores[0].upsert_deployment("m", str(v), state=LAUNCHING)
    barrier = threading.Barrier(8)

    def choose(i: int) -> int:
        barrier.wait()
        return stores[i].allocate_port("m", str(i), 100, 199)

    with ThreadPoolExecutor(8) as pool:
        ports = list(pool.map(choose, range(8)))
    assert len(set(ports)) == 8
    assert {d.version: d.port for d in stores[0].deployments("m")} == {str(i): p for i, p in enumerate(ports)}


def test_processes_starting_at_once_share_one_schema(tmp_path: Path) -> None:
    # The API, the reconciler and MLflow's auth plugin open the same new file at the same moment
    # (CI saw the API fail to boot on "table served_models already exists"). Each round is a new
    # file so every round races on creation.
    for round_ in range(10):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        barrier = threading.Barrier(6)

        def open_store(_: int, url: str = url, barrier: threading.Barrier = barrier) -> Store:
            barrier.wait()
            return Store(url)

        with ThreadPoolExecutor(6) as pool:
            stores = list(pool.map(open_store, range(6)))
        assert stores[0].enable("m") and stores[-1].enabled_models() == ["m"]


def test_disable_and_delete(url: str) -> None:
    s = Store(url)
    s.enable("m")
    s.upsert_deployment("m", "1", state=PENDING)
    assert s.disable("m") and not s.disable("m")
    s.delete_deployments("m")
    assert s.deployments("m") == [] and not s.is_enabled("m")
    s.set_meta("k", "v")
    assert s.get_meta("k") == "v"
    s.set_meta("k", None)
    assert s.get_meta("k") is None


def test_box_settings_default_then_kept_field_by_field(url: str) -> None:
    s = Store(url)
    assert s.box_settings("m") == BoxSettings()
    s.update_box_settings("m", {"network": True, "memory_mb": 4096}, "boss")
    s.update_box_settings("m", {"cpus": 1.5}, "root")
    got = Store(url).box_settings("m")
    assert (got.network, got.memory_mb, got.cpus, got.max_processes, got.updated_by) == (True, 4096, 1.5, None, "root")
    s.update_box_settings("m", {"memory_mb": None}, "boss")
    assert s.box_settings("m").memory_mb is None and s.box_settings("m").network is True
    s.disable("m")  # the box outlives serving: enabling again brings it back
    assert s.box_settings("m").cpus == 1.5
    with pytest.raises(ValueError):
        s.update_box_settings("m", {"uid": 0}, "boss")


def test_uids_are_unique_stable_and_kept_after_disable(url: str) -> None:
    s = Store(url)
    s.enable("a")
    assert s.model_uid("a") is None
    a = s.allocate_uid("a", 100, 102)
    b = s.allocate_uid("b", 100, 102, is_free=lambda uid: uid != 101)
    assert (a, b) == (100, 102)
    s.disable("a")
    again = Store(url)
    assert again.allocate_uid("a", 100, 102) == a and again.model_uid("b") == b
    assert again.allocate_uid("c", 100, 102) == 101


def test_an_exhausted_uid_range_is_a_clear_error(url: str) -> None:
    s = Store(url)
    s.allocate_uid("a", 100, 100)
    with pytest.raises(UidRangeExhausted, match="MODELSERVE_MODEL_UID_START"):
        s.allocate_uid("b", 100, 100)
    assert s.model_uid("b") is None
    assert s.allocate_uid("a", 100, 100) == 100  # a model that has one keeps it


def test_stores_on_one_file_racing_for_uids(url: str) -> None:
    # Every API worker and the reconciler may work out a box at once: different models get
    # different uids, the same model one uid whoever asks first.
    stores = [Store(url) for _ in range(8)]
    barrier = threading.Barrier(8)

    def choose(i: int) -> tuple[int, int]:
        barrier.wait()
        return stores[i].allocate_uid(f"m{i}", 500, 599), stores[i].allocate_uid("shared", 500, 599)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(choose, range(8)))
    own = [g[0] for g in got]
    assert len(set(own)) == 8 and len({g[1] for g in got}) == 1 and got[0][1] not in own


def test_first_box_settings_saved_at_once(url: str) -> None:
    stores = [Store(url) for _ in range(6)]
    barrier = threading.Barrier(6)

    def save(i: int) -> None:
        barrier.wait()
        stores[i].update_box_settings("m", {"max_processes": 100 + i}, f"u{i}")

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(save, range(6)))
    assert 100 <= (stores[0].box_settings("m").max_processes or 0) <= 105


def test_a_schema_created_meanwhile_by_another_process_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Postgres refuses the loser of two concurrent CREATE TABLEs on its catalog's unique index
    ("duplicate key value"), not with "already exists": both mean the other process made it."""
    from sqlalchemy.exc import DBAPIError

    from supervisor import store

    calls: list[int] = []

    def create_all(_engine: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise DBAPIError("CREATE TABLE served_models", {}, Exception(
                'duplicate key value violates unique constraint "pg_type_typname_nsp_index"'))

    monkeypatch.setattr(store.metadata, "create_all", create_all)
    store._create_schema(object())  # type: ignore[arg-type]
    assert len(calls) == 2

    def refuse(_engine: object) -> None:
        raise DBAPIError("CREATE TABLE x", {}, Exception("permission denied for schema public"))

    monkeypatch.setattr(store.metadata, "create_all", refuse)
    with pytest.raises(DBAPIError):
        store._create_schema(object())  # type: ignore[arg-type]


def test_concurrent_enables_and_upserts_of_the_same_rows_all_succeed(url: str) -> None:
    s = Store(url)
    with ThreadPoolExecutor(8) as pool:
        enabled = list(pool.map(lambda _i: s.enable("m"), range(8)))
        list(pool.map(lambda i: s.upsert_deployment("m", "1", state=LAUNCHING, state_message=str(i)), range(8)))
    assert enabled.count(True) == 1
    [d] = s.deployments("m")
    assert d.state == LAUNCHING
