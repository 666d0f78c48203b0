"""The docker runtime's decisions that need no engine: names, hashes, reasons, addresses."""

from __future__ import annotations

from pathlib import Path

from supervisor.runtime.base import VersionLaunch
from supervisor.runtime.docker import STATUS_STALE_AFTER, DockerRuntime, exit_reason, stale_reason
from supervisor.settings import Settings


def launch(version: str, env: str = "e1") -> VersionLaunch:
    return VersionLaunch(version, Path(f"/opt/envs/{env}/bin/python"), Path(f"/m/{version}"), 20000, env)


def test_desired_hash_follows_the_version_set_not_its_order(tmp_path: Path) -> None:
    rt = DockerRuntime(Settings(data_dir=tmp_path))
    one_two = rt.desired_hash("m", [launch("1"), launch("2")])
    assert rt.desired_hash("m", [launch("2"), launch("1")]) == one_two
    assert rt.desired_hash("m", [launch("1")]) != one_two
    assert rt.desired_hash("m", [launch("1"), launch("2", "e2")]) != one_two
    other = DockerRuntime(Settings(data_dir=tmp_path / "other"))
    assert other.instance != rt.instance  # another data dir never adopts these containers
    assert other.desired_hash("m", [launch("1"), launch("2")]) != one_two


def test_exit_reasons_say_why() -> None:
    assert "killed by SIGKILL" in exit_reason("c", {"Status": "exited", "ExitCode": 137})
    assert "out of memory" in exit_reason("c", {"Status": "exited", "ExitCode": 137, "OOMKilled": True})
    assert "exit code 1" in exit_reason("c", {"Status": "exited", "ExitCode": 1})


def test_address_is_the_runtimes_answer_in_both_network_modes(tmp_path: Path) -> None:
    import json

    for network, expected in (("host", ("127.0.0.1", 29999)), ("modelserve", ("modelserve-model-x", 29999))):
        rt = DockerRuntime(Settings(data_dir=tmp_path / network, docker_network=network))
        d = rt._model_dir("m")
        d.mkdir(parents=True)
        (d / "active.json").write_text(json.dumps({"id": "abc", "name": "modelserve-model-x", "ports": {"1": 29999}}))
        assert rt.address("m", "1", 20000) == expected
        assert rt.address("m", "9", 20000) == ("127.0.0.1", 20000)  # not in the container


def test_a_model_host_that_stops_reporting_counts_as_not_answering() -> None:
    started = 1000.0
    assert stale_reason({}, started, started + 5) is None  # just started, nothing written yet
    assert stale_reason({"updated": started + 60}, started, started + 62) is None
    late = stale_reason({"updated": started + 1}, started, started + 1 + STATUS_STALE_AFTER + 5)
    assert late is not None and "has not reported" in late
    # A status file from before this start (a restarted container) does not count against it.
    assert stale_reason({"updated": started - 500}, started, started + 10) is None
