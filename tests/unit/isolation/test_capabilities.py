"""The capability report from fake /proc and /sys/fs/cgroup trees and fake commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.isolation import capabilities
from supervisor.isolation.capabilities import (
    Capabilities,
    Probes,
    cgroup_version,
    machine_capabilities,
    probe,
)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def probes(tmp_path: Path, *, euid: int = 1000, commands: dict[str, int] | None = None,
           writable: set[str] | None = None) -> Probes:
    """Commands named in ``commands`` exist and exit with that code; only paths ending in one of
    ``writable`` may be written."""
    commands = {"bwrap": 0, "unshare": 0} if commands is None else commands
    ran: list[list[str]] = []

    def run(argv: list[str], timeout: float) -> tuple[int, str]:
        ran.append(argv)
        code = commands[Path(argv[0]).name]
        return code, "" if code == 0 else "bwrap: setting up uid map: Permission denied\nmore"

    return Probes(proc=tmp_path / "proc", cgroup_root=tmp_path / "cg", euid=lambda: euid,
                  which=lambda name: f"/usr/bin/{name}" if name in commands else None, run=run,
                  writable=lambda p: any(str(p).endswith(w) for w in (writable or set())))


def by_what(caps: Capabilities) -> dict[str, tuple[bool, str]]:
    return {c.what: (c.enforced, c.detail) for c in caps.items}


def v1_tree(tmp_path: Path) -> None:
    write(tmp_path / "proc/self/cgroup", "4:memory:/job/1\n3:pids:/\n2:cpu,cpuacct:/\n0::/\n")
    (tmp_path / "cg/memory/job/1").mkdir(parents=True)
    (tmp_path / "cg/pids").mkdir(parents=True)
    (tmp_path / "cg/cpu,cpuacct").mkdir(parents=True)


def test_root_on_cgroup_v1_with_bwrap_enforces_everything(tmp_path: Path) -> None:
    v1_tree(tmp_path)
    p = probes(tmp_path, euid=0, writable={"memory/job/1", "cg/pids", "cpu,cpuacct"})
    caps = probe("bwrap", p)
    got = by_what(caps)
    assert cgroup_version(p) == 1
    assert caps.not_enforced() == [] and caps.to_json()["all_enforced"] is True
    assert list(got) == ["identity", "sandbox", "user_namespaces", "network", "memory", "cpu", "pids"]
    assert "own uid" in got["identity"][1]
    assert got["memory"][1].startswith("memory limits: cgroup v1 memory controller")
    assert got["memory"][1].endswith("memory/job/1 writable)")


def test_ordinary_user_on_cgroup_v1_cannot_limit(tmp_path: Path) -> None:
    v1_tree(tmp_path)
    got = by_what(probe("bwrap", probes(tmp_path)))
    assert got["identity"] == (True, "identity: no uid of its own (the supervisor is not root); each model runs as "
                                     "the supervisor's user inside its own sandbox")
    assert got["cpu"][0] is False
    assert got["cpu"][1].startswith("CPU limits NOT enforced: no cgroup cpu controller writable by this user")
    assert "RLIMIT_AS" in got["memory"][1]


def test_cgroup_v2_needs_the_controller_and_its_delegation(tmp_path: Path) -> None:
    write(tmp_path / "proc/self/cgroup", "0::/user.slice/me\n")
    write(tmp_path / "cg/cgroup.controllers", "cpuset cpu io memory pids")
    write(tmp_path / "cg/user.slice/me/cgroup.controllers", "memory pids")
    write(tmp_path / "cg/user.slice/me/cgroup.subtree_control", "")
    p = probes(tmp_path, writable={"user.slice/me", "user.slice/me/cgroup.subtree_control"})
    got = by_what(probe("bwrap", p))
    assert cgroup_version(p) == 2
    assert got["memory"][0] is True and "cgroup v2 memory controller, delegated to" in got["memory"][1]
    assert got["cpu"][0] is False and "offers no cpu controller" in got["cpu"][1]
    undelegated = by_what(probe("bwrap", probes(tmp_path)))
    assert undelegated["pids"][0] is False and "not delegated to this user" in undelegated["pids"][1]


def test_no_cgroups_at_all(tmp_path: Path) -> None:
    got = by_what(probe("bwrap", probes(tmp_path)))
    assert all(got[c][0] is False and "no cgroup file system" in got[c][1] for c in ("memory", "cpu", "pids"))


def test_sandbox_off_missing_or_broken(tmp_path: Path) -> None:
    off = by_what(probe("off", probes(tmp_path)))
    assert off["sandbox"] == (False, "sandbox NOT used: MODELSERVE_SANDBOX=off runs model code unconfined "
                                     "(for local play only)")
    assert off["network"][0] is False and off["identity"][0] is False
    missing = by_what(probe("bwrap", probes(tmp_path, commands={})))
    assert missing["sandbox"][0] is False and "not installed" in missing["sandbox"][1]
    assert missing["user_namespaces"][0] is False
    broken = by_what(probe("bwrap", probes(tmp_path, commands={"bwrap": 1, "unshare": 1})))
    assert broken["sandbox"] == (False, "sandbox NOT available: bwrap is installed but cannot make its namespaces "
                                        "here (bwrap: setting up uid map: Permission denied)")
    assert broken["user_namespaces"][0] is False


def test_user_namespaces_turned_off_by_sysctl(tmp_path: Path) -> None:
    write(tmp_path / "proc/sys/kernel/unprivileged_userns_clone", "0\n")
    got = by_what(probe("bwrap", probes(tmp_path, commands={"bwrap": 1})))
    assert got["user_namespaces"] == (False, "user namespaces NOT usable by this user: "
                                             "kernel.unprivileged_userns_clone is 0")
    write(tmp_path / "proc/sys/user/max_user_namespaces", "0\n")
    assert "max_user_namespaces is 0" in by_what(probe("bwrap", probes(tmp_path, euid=0)))["user_namespaces"][1]
    # bwrap alone proves them when there is no unshare command to ask
    (tmp_path / "proc/sys/user/max_user_namespaces").write_text("100")
    assert by_what(probe("bwrap", probes(tmp_path, euid=0, commands={"bwrap": 0})))["user_namespaces"][0] is True


def test_the_machine_is_probed_once_per_process() -> None:
    assert machine_capabilities("off") is machine_capabilities("off")


# --- the docker runtime ----------------------------------------------------------------------
ENGINE = {"CgroupVersion": "1", "CgroupDriver": "cgroupfs", "MemoryLimit": True, "SwapLimit": True,
          "CpuCfsQuota": True, "PidsLimit": True}


def test_docker_engine_with_every_limit_enforces_everything() -> None:
    caps = capabilities.docker_probe(dict(ENGINE))
    assert caps.to_json()["all_enforced"] is True
    items = {c.what: c for c in caps.items}
    assert set(items) == {"identity", "sandbox", "user_namespaces", "network", "memory", "cpu", "pids"}
    assert "Docker container" in items["sandbox"].detail
    assert "cgroup v1 memory controller" in items["memory"].detail


def test_docker_engine_without_swap_accounting_does_not_limit_memory() -> None:
    caps = capabilities.docker_probe(ENGINE | {"SwapLimit": False})
    assert [c.what for c in caps.not_enforced()] == ["memory"]
    assert "SwapLimit unsupported" in caps.not_enforced()[0].detail


def test_docker_engine_that_does_not_answer_is_said_plainly() -> None:
    caps = capabilities.docker_probe(None, "connection refused")
    missing = {c.what for c in caps.not_enforced()}
    assert missing == {"sandbox", "user_namespaces", "network", "memory", "cpu", "pids"}
    assert all("connection refused" in c.detail for c in caps.not_enforced())


def test_docker_runtime_asks_the_engine_again_until_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "_docker_answer", None)
    answers: list[dict[str, object] | Exception] = [OSError("not up yet"), dict(ENGINE)]
    asked = []

    def info() -> dict[str, object]:
        asked.append(1)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    first = capabilities.runtime_capabilities("docker", "bwrap", info)
    assert not first.to_json()["all_enforced"] and "not up yet" in first.not_enforced()[0].detail
    assert capabilities.runtime_capabilities("docker", "bwrap", info).to_json()["all_enforced"]
    assert capabilities.runtime_capabilities("docker", "bwrap", info).to_json()["all_enforced"]
    assert len(asked) == 2
