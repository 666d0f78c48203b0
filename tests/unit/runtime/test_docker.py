"""The docker runtime's decisions that need no engine: names, hashes, reasons, addresses, the box."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from supervisor.isolation.box import Box, MiB
from supervisor.runtime import sockets
from supervisor.runtime.base import VersionLaunch
from supervisor.runtime.docker import (
    NOBODY,
    STATUS_STALE_AFTER,
    DockerRuntime,
    container_cgroups,
    container_user,
    exit_reason,
    hardening,
    stale_reason,
)
from supervisor.settings import Settings

BOX = Box(uid=None, gid=None, memory_bytes=2048 * MiB, cpus=1.5, pids=256, tmp_bytes=64 * MiB)


def launch(version: str, env: str = "e1") -> VersionLaunch:
    return VersionLaunch(version, Path(f"/opt/envs/{env}/bin/python"), Path(f"/m/{version}"), 20000, env)


def test_desired_hash_follows_the_version_set_not_its_order(tmp_path: Path) -> None:
    rt = DockerRuntime(Settings(data_dir=tmp_path))
    one_two = rt.desired_hash("m", [launch("1"), launch("2")], BOX)
    assert rt.desired_hash("m", [launch("2"), launch("1")], BOX) == one_two
    assert rt.desired_hash("m", [launch("1")], BOX) != one_two
    assert rt.desired_hash("m", [launch("1"), launch("2", "e2")], BOX) != one_two
    other = DockerRuntime(Settings(data_dir=tmp_path / "other"))
    assert other.instance != rt.instance  # another data dir never adopts these containers
    assert other.desired_hash("m", [launch("1"), launch("2")], BOX) != one_two


@pytest.mark.parametrize("change", [{"memory_bytes": 1024 * MiB}, {"cpus": 2.0}, {"pids": 100},
                                    {"tmp_bytes": 1 * MiB}, {"network": True}, {"uid": 70001, "gid": 70001}])
def test_a_changed_box_is_a_new_desired_state(tmp_path: Path, change: dict[str, object]) -> None:
    rt = DockerRuntime(Settings(data_dir=tmp_path))
    versions = [launch("1")]
    assert rt.desired_hash("m", versions, dataclasses.replace(BOX, **change)) != rt.desired_hash("m", versions, BOX)


def test_the_container_is_the_models_box() -> None:
    options = hardening(BOX, (NOBODY, NOBODY))
    assert options["user"] == "65534:65534"
    assert options["cap_drop"] == ["ALL"] and options["security_opt"] == ["no-new-privileges"]
    assert options["read_only"] is True and options["tmpfs"] == {"/tmp": f"size={64 * MiB},mode=1777"}
    assert options["pids_limit"] == 256 and options["nano_cpus"] == 1_500_000_000
    assert options["mem_limit"] == options["memswap_limit"] == 2048 * MiB
    assert options["network_mode"] == "none"
    assert hardening(dataclasses.replace(BOX, network=True), (1, 1))["network_mode"] == "bridge"  # never "host"
    # Nothing of the supervisor's environment goes in: only the fixed, secret-free variables.
    assert set(options["environment"]) == {"HOME", "TMPDIR", "MPLCONFIGDIR", "PYTHONDONTWRITEBYTECODE"}


def test_a_container_never_runs_as_root() -> None:
    assert container_user(dataclasses.replace(BOX, uid=70001, gid=70002)) == (70001, 70002)
    expected = (NOBODY, NOBODY) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    assert container_user(BOX) == expected and 0 not in container_user(BOX)


def test_exit_reasons_say_why() -> None:
    assert "killed by SIGKILL" in exit_reason("c", {"Status": "exited", "ExitCode": 137})
    oom = exit_reason("c", {"Status": "exited", "ExitCode": 137, "OOMKilled": True})
    assert "out of memory" in oom and "SIGKILL" in oom  # OOMKilled may be any process's, earlier
    assert "exit code 1" in exit_reason("c", {"Status": "exited", "ExitCode": 1})


def test_address_is_the_current_containers_socket(tmp_path: Path) -> None:
    rt = DockerRuntime(Settings(data_dir=tmp_path))
    d = rt._model_dir("m")
    d.mkdir(parents=True)
    socket_dir = rt._socket_dir("m", "abcdef0123456789")
    (d / "active.json").write_text(json.dumps({"id": "abc", "name": "modelserve-model-x", "versions": ["1"],
                                               "socket_dir": str(socket_dir)}))
    # The published link of it, which the container cannot change (no socket bound here: none yet).
    assert rt.address("m", "1") == f"unix:{sockets.published_path(rt.settings.sockets_dir, socket_dir / '1.sock')}"
    assert socket_dir.parent.parent == rt.settings.sockets_dir and socket_dir.name == "abcdef0123"
    missing = rt.address("m", "9")  # not in the container: a path nothing listens on
    assert missing.startswith("unix:") and not missing.startswith(f"unix:{socket_dir}/")


def test_the_containers_oom_kills_are_read_from_its_memory_cgroup(tmp_path: Path) -> None:
    v1 = tmp_path / "memory" / "docker" / "cid"
    v1.mkdir(parents=True)
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    found = container_cgroups("cid", tmp_path)
    assert found is not None and found.oom_kills() == 3
    v2 = tmp_path / "system.slice" / "docker-other.scope"
    v2.mkdir(parents=True)
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    found = container_cgroups("other", tmp_path)
    assert found is not None and found.oom_kills() == 1
    assert container_cgroups("unknown", tmp_path) is None


def test_a_model_host_that_stops_reporting_counts_as_not_answering() -> None:
    started = 1000.0
    assert stale_reason(None, started, started + 5) is None  # just started, nothing written yet
    assert stale_reason(started + 60, started, started + 62) is None
    late = stale_reason(started + 1, started, started + 1 + STATUS_STALE_AFTER + 5)
    assert late is not None and "has not reported" in late
    # A status file from before this start (a restarted container) does not count against it.
    assert stale_reason(started - 500, started, started + 10) is None
