"""The health endpoint: unauthenticated, and the one place that says the registry is away while
every sign-in (which MLflow checks) may be failing with it."""

from __future__ import annotations

from pathlib import Path

from supervisor.api.app import create_app
from supervisor.auth.access import Access
from supervisor.reconciler import REGISTRY_ERROR_KEY
from supervisor.settings import Settings
from supervisor.store import Store
from tests.support import FakeRegistry, FakeUsers


def test_health_reports_the_registry_without_credentials(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, auth=True)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    access = Access(settings, store, users=FakeUsers())  # type: ignore[arg-type]
    client = create_app(settings, store=store, registry=FakeRegistry(), access=access).test_client()  # type: ignore[arg-type]
    body = client.get("/api/2.0/modelserve/health").get_json()
    isolation = body.pop("isolation")
    assert body == {"status": "ok", "auth": "on", "registry": "reachable"}
    assert {i["what"] for i in isolation["items"]} >= {"identity", "sandbox", "network", "memory", "cpu", "pids"}
    assert isolation["all_enforced"] == all(i["enforced"] for i in isolation["items"])
    store.set_meta(REGISTRY_ERROR_KEY, "1700000000000 ConnectTimeout: read timed out")
    body = client.get("/api/2.0/modelserve/health").get_json()
    assert body["registry"] == "unreachable"
    assert body["registry_error"] == "ConnectTimeout: read timed out"
    assert body["status"] == "ok"
