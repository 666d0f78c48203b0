"""box_for: the model's own settings over the defaults, and a uid of its own only as root."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.isolation import boxes
from supervisor.isolation.box import MiB
from supervisor.isolation.boxes import box_for, unused_by_accounts
from supervisor.settings import Settings
from supervisor.store import Store, UidRangeExhausted


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 's.db'}")


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(data_dir=tmp_path, model_memory_mb=1024, model_cpus=1.5, model_pids=300, model_tmp_mb=64,
                    model_uid_start=71000, model_uid_end=71001, **kw)  # type: ignore[arg-type]


def test_defaults_then_overrides_then_defaults_again(store: Store, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boxes, "running_as_root", lambda: False)
    s = settings(tmp_path)
    box = box_for(store, s, "m")
    assert (box.uid, box.gid, box.memory_bytes, box.cpus, box.pids, box.tmp_bytes, box.network) == (
        None, None, 1024 * MiB, 1.5, 300, 64 * MiB, False)
    store.update_box_settings("m", {"network": True, "memory_mb": 4096, "cpus": 3.0, "max_processes": 64}, "boss")
    box = box_for(store, s, "m")
    assert (box.memory_bytes, box.cpus, box.pids, box.network) == (4096 * MiB, 3.0, 64, True)
    store.update_box_settings("m", {"memory_mb": None, "cpus": None}, "boss")
    box = box_for(store, s, "m")
    assert (box.memory_bytes, box.cpus, box.pids, box.network) == (1024 * MiB, 1.5, 64, True)
    assert box_for(store, s, "other").network is False
    assert store.model_uid("m") is None  # an ordinary user allocates no uid


def test_as_root_each_model_has_its_own_lasting_uid(store: Store, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boxes, "running_as_root", lambda: True)
    monkeypatch.setattr(boxes, "unused_by_accounts", lambda uid: True)
    s = settings(tmp_path)
    a, b = box_for(store, s, "a"), box_for(store, s, "b")
    assert (a.uid, a.gid, b.uid, b.gid) == (71000, 71000, 71001, 71001)
    assert box_for(store, s, "a").uid == 71000
    with pytest.raises(UidRangeExhausted):
        box_for(store, s, "c")


def test_uids_of_accounts_are_skipped() -> None:
    assert unused_by_accounts(0) is False  # root
    assert unused_by_accounts(2**31 - 7) is True
