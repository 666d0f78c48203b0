"""get-status shows each version's replicas when the runtime has replicas (swarm), and nothing
new otherwise."""

from __future__ import annotations

from pathlib import Path

from supervisor.runtime.base import HostState, VersionProcess
from supervisor.status import endpoint_status
from supervisor.store import Store


class FakeRuntime:
    name = "swarm"

    def __init__(self, host: HostState | None) -> None:
        self.host = host

    def host_state(self, model: str) -> HostState | None:
        return self.host


def test_replicas_per_version_with_node_and_state(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    host = HostState("m", True, versions={"2": VersionProcess("2", True)},
                     replicas={"2": [{"node": "10.0.0.2", "state": "running"},
                                     {"node": "10.0.0.3", "state": "node down"}]})
    out = endpoint_status(store, FakeRuntime(host), "m")  # type: ignore[arg-type]
    assert out["replicas"] == [{"endpoint_version_name": "2", "node": "10.0.0.2", "state": "running"},
                               {"endpoint_version_name": "2", "node": "10.0.0.3", "state": "node down"}]
    assert "replicas" not in endpoint_status(store, FakeRuntime(HostState("m", True)), "m")  # type: ignore[arg-type]
