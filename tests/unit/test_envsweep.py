"""The start-up sweep of abandoned environment builds: what it removes, and what it must leave."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

from supervisor.envs import MARKER_NAME
from supervisor.envsweep import leftovers, sweep

HASH_A = "0123456789abcdef"
HASH_B = "fedcba9876543210"


def env(envs: Path, name: str, marked: bool = False) -> Path:
    (envs / name / "bin").mkdir(parents=True)
    (envs / name / "bin" / "python").write_text("")
    if marked:
        (envs / name / MARKER_NAME).write_text(json.dumps({"hash": name}))
    return envs / name


def test_abandoned_builds_and_unmarked_envs_go_finished_ones_stay(tmp_path: Path) -> None:
    building = env(tmp_path, f".building-{HASH_A}-1a2b3c4d")
    unmarked = env(tmp_path, HASH_A)
    finished = env(tmp_path, HASH_B, marked=True)
    (tmp_path / f"{HASH_B}.lock").write_text("")
    lines: list[str] = []
    assert leftovers(tmp_path) == {HASH_A: [building, unmarked]}
    assert sorted(sweep(tmp_path, lines.append)) == sorted([building, unmarked])
    assert not building.exists() and not unmarked.exists()
    assert (finished / MARKER_NAME).is_file()
    assert any(".building-" in line for line in lines)
    assert leftovers(tmp_path) == {}


def test_a_build_that_holds_its_lock_is_left_alone(tmp_path: Path) -> None:
    building = env(tmp_path, f".building-{HASH_A}-00ff00ff")
    other = env(tmp_path, f".building-{HASH_B}-00ff00ff")
    # A running build (or an orphaned uv that inherited the lock) holds <hash>.lock.
    with open(tmp_path / f"{HASH_A}.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        lines: list[str] = []
        assert sweep(tmp_path, lines.append) == [other]
        assert building.exists() and not other.exists()
        assert any("being built by another process" in line for line in lines)
    assert sweep(tmp_path) == [building]


def test_no_envs_dir_is_nothing_to_do(tmp_path: Path) -> None:
    assert sweep(tmp_path / "absent") == []
    assert not (tmp_path / "absent").exists()
