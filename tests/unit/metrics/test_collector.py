"""A real Nginx writes the metrics log; the collector counts every request, across a rotation."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from supervisor.gateway import Gateway
from supervisor.metrics.collector import Collector
from supervisor.metrics.exposition import load_state, prometheus_text
from supervisor.metrics.series import RouteKey
from supervisor.store import PENDING, READY, Store
from tests.support import wait_until
from tests.unit.test_gateway import backends, gateway, post, table  # noqa: F401 - fixtures

NAME = "my model"


def _store(tmp_path: Path, ports: list[int]) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    store.enable(NAME)
    store.upsert_deployment(NAME, "1", state=READY, port=ports[0], aliases=["champion"])
    store.upsert_deployment(NAME, "2", state=READY, port=ports[1], stage="Production")
    store.upsert_deployment(NAME, "3", state=PENDING)
    return store


def _poll_until(collector: Collector, want: int) -> int:
    got = 0
    # Nginx flushes its buffer at least every second; a minute allows for a loaded machine.
    deadline = time.monotonic() + 60
    while True:
        got += collector.poll()
        if got >= want or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    return got


def test_every_scoring_request_is_counted_by_route(gateway: Gateway, backends: list[int],  # noqa: F811
                                                   tmp_path: Path) -> None:
    gateway.apply_routes(table(backends, extra_pending=True))
    store = _store(tmp_path, backends)
    collector = Collector(gateway.settings, store, gateway.reopen_logs)
    for _ in range(5):
        assert post(gateway, "/model/my%20model/1/invocations").status_code == 200
    for _ in range(3):
        assert post(gateway, "/model/my%20model/production/invocations").status_code == 200
    assert post(gateway, "/model/my%20model/@champion/invocations").status_code == 200
    assert post(gateway, "/model/my%20model/3/invocations").status_code == 503
    assert post(gateway, "/model/nobody/1/invocations").status_code == 404
    assert post(gateway, "/model/my%20model/1/invocations", data=b"x" * (17 << 20)).status_code == 413
    requests.get(f"{gateway.settings.gateway_url}/api/2.0/preview/mlflow/endpoints/list", timeout=10)
    assert _poll_until(collector, 12) == 12  # the API call is not a scoring request: not logged

    state = load_state(store)  # what the API workers read
    assert state.routes[RouteKey(NAME, "1", "1")].codes == {"200": 5, "413": 1}
    assert state.routes[RouteKey(NAME, "2", "Production")].count == 3
    assert state.routes[RouteKey(NAME, "1", "@champion")].count == 1
    assert state.routes[RouteKey(NAME, "3", "3")].codes == {"503": 1}
    assert state.unrouted == 1
    text = prometheus_text(state, store.deployments(), {})
    assert 'modelserve_requests_total{model="my model",version="1",route="1",code="200"} 5' in text
    assert 'modelserve_request_duration_seconds_count{model="my model",version="2",route="Production"} 3' in text
    assert 'modelserve_request_errors_total{model="my model",version="3",route="3"} 1' in text

    # A restarted collector resumes where the saved offset says: nothing is counted twice.
    again = Collector(gateway.settings, store, gateway.reopen_logs)
    assert again.poll() == 0
    assert load_state(store).routes[RouteKey(NAME, "1", "1")].count == 6


def test_rotation_loses_nothing(gateway: Gateway, backends: list[int], tmp_path: Path) -> None:  # noqa: F811
    gateway.apply_routes(table(backends))
    store = _store(tmp_path, backends)
    collector = Collector(gateway.settings, store, gateway.reopen_logs)
    collector.tail.rotate_bytes = 1  # rotate after every read
    total = 0
    for _ in range(3):
        for _ in range(4):
            assert post(gateway, "/model/my%20model/2/invocations").status_code == 200
        total += 4
        assert _poll_until(collector, 4) == 4
    # `nginx -s reopen` only signals: on a loaded machine the master makes the fresh file a
    # moment later, and only then is the rotated one drained and removed.
    wait_until("Nginx to reopen a fresh file", gateway.settings.metrics_log.exists, timeout=30)
    collector.poll()  # drains and removes the rotated file
    assert load_state(store).routes[RouteKey(NAME, "2", "2")].count == total
    assert not collector.tail.old.exists()
