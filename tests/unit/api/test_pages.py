"""The serving pages in every state, with a fake registry and runtime: never a stack trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from supervisor.api.app import create_app
from supervisor.deployer import build_log_path
from supervisor.metrics.accesslog import Access
from supervisor.metrics.exposition import save_state
from supervisor.metrics.series import MetricsState, RouteKey
from supervisor.registry import RegistryModel, RegistryVersion
from supervisor.runtime.base import HostState
from supervisor.settings import Settings
from supervisor.store import FAILED, PENDING, READY, VERSION_UPDATE, Store
from tests.support import FakeRegistry


class FakeRuntime:
    name = "process"

    def __init__(self) -> None:
        self.broken = False

    def host_state(self, model: str) -> HostState | None:
        if self.broken:
            raise RuntimeError("/secret/path exploded")
        return HostState(model=model, alive=True, pid=1)

    def version_log(self, model: str, version: str, max_bytes: int = 0) -> str:
        return f"scoring server {version} listening"


class Ctx:
    def __init__(self, tmp_path: Path) -> None:
        self.settings = Settings(data_dir=tmp_path, auth=False)  # access control: test_pages_access.py
        self.store = Store(f"sqlite:///{tmp_path / 's.db'}")
        self.registry = FakeRegistry({
            "iris": RegistryModel("iris", (RegistryVersion("1", "Production", ("champion",)), RegistryVersion("2"),
                                           RegistryVersion("3"))),
            "empty": RegistryModel("empty", ()),
        })
        self.runtime = FakeRuntime()
        app = create_app(self.settings, store=self.store, registry=self.registry, runtime=self.runtime)  # type: ignore[arg-type]
        self.client: FlaskClient = app.test_client()

    def page(self, url: str, status: int = 200) -> str:
        r = self.client.get(url)
        text = r.get_data(as_text=True)
        assert r.status_code == status, text[-2000:]
        assert r.mimetype == "text/html"
        assert "Traceback" not in text and 'File "' not in text
        return text

    def serve_iris(self) -> None:
        self.store.enable("iris")
        self.store.upsert_deployment("iris", "1", state=READY, stage="Production", aliases=["champion"], port=1)
        self.store.upsert_deployment("iris", "2", state=FAILED, state_message="Environment build failed: no wheel")
        self.store.upsert_deployment("iris", "3", state=PENDING, state_message="Environment abc: installing 4 packages")
        log = build_log_path(self.settings, "iris", "3")
        log.parent.mkdir(parents=True)
        log.write_text("".join(f"build line {i}\n" for i in range(30)))


@pytest.fixture()
def ctx(tmp_path: Path) -> Ctx:
    return Ctx(tmp_path)


def test_status_page_lists_every_registered_model(ctx: Ctx) -> None:
    ctx.serve_iris()
    html = ctx.page("/serving/")
    assert 'data-model="iris"' in html and 'data-model="empty"' in html
    assert "v1 Ready" in html and "v2 Failed" in html and "v3 Pending" in html
    assert "Not served" in html  # "empty"
    live = ctx.page("/serving/?partial=1")
    assert "<html" not in live and 'data-model="iris"' in live


def test_status_page_with_the_registry_down(ctx: Ctx) -> None:
    ctx.serve_iris()
    ctx.registry.down = True
    html = ctx.page("/serving/")
    assert "registry is unreachable" in html and "connection refused" in html
    assert 'data-model="iris"' in html  # served models are still listed, from the store


def test_pages_do_not_wait_for_a_registry_known_to_be_away(ctx: Ctx) -> None:
    # The reconciler recorded the registry unreachable: pages (whose live panels refresh every
    # 2-3 s) answer from the store at once instead of each holding an API worker for a timeout.
    from supervisor.reconciler import REGISTRY_ERROR_KEY

    ctx.serve_iris()
    ctx.store.set_meta(REGISTRY_ERROR_KEY, "1700000000000 ReadTimeout: read timed out")
    asked: list[str] = []
    ctx.registry.get_model = lambda name: asked.append(name)  # type: ignore[method-assign,assignment,func-returns-value]
    ctx.registry.list_models = lambda: asked.append("*") or []  # type: ignore[method-assign,func-returns-value]
    for path in ("/serving/", "/serving/model?name=iris"):
        html = ctx.page(path)
        assert "registry is unreachable (ReadTimeout: read timed out)" in html
    assert 'data-model="iris"' in ctx.page("/serving/")
    assert asked == []


def test_model_not_served_offers_enable(ctx: Ctx) -> None:
    html = ctx.page("/serving/model?name=iris")
    assert 'data-action="enable"' in html and 'data-action="disable"' not in html
    assert "Not served" in html and "<td>Production</td>" in html


def test_served_model_page(ctx: Ctx) -> None:
    ctx.serve_iris()
    html = ctx.page("/serving/model?name=iris")
    assert 'data-action="disable"' in html and "Pending" in html
    for path in ("/model/iris/1/invocations", "/model/iris/Production/invocations",
                 "/model/iris/@champion/invocations", "/model/iris/3/invocations"):
        assert f'data-uri="{path}"' in html
    assert 'data-uri="/model/iris/2/invocations"' not in html  # a failed version has no URI
    assert "Environment build failed: no wheel" in html
    assert "build line 29" in html and "build line 10" not in html  # the build's progress, its tail only
    assert "format=pandas-records" in html and "-u token:$DATABRICKS_TOKEN" in html
    assert html.count("<svg") == 3 and 'id="testbox"' in html


def test_model_without_versions(ctx: Ctx) -> None:
    assert "has no registered version yet" in ctx.page("/serving/model?name=empty")
    ctx.store.enable("empty")
    assert "no active version" in ctx.page("/serving/model?name=empty")


def test_model_page_with_the_registry_down(ctx: Ctx) -> None:
    ctx.serve_iris()
    ctx.registry.down = True
    html = ctx.page("/serving/model?name=iris")
    assert "registry is unreachable" in html and 'data-uri="/model/iris/1/invocations"' in html


def test_unknown_model_and_version_are_pages(ctx: Ctx) -> None:
    assert "no registered model named" in ctx.page("/serving/model?name=nope", 404)
    assert "Which model?" in ctx.page("/serving/model", 404)
    ctx.serve_iris()
    assert "is not served" in ctx.page("/serving/version?name=iris&version=9", 404)


def test_events_newest_first_and_by_version(ctx: Ctx) -> None:
    ctx.serve_iris()
    ctx.store.add_event("iris", VERSION_UPDATE, "Version 1 is ready and serving", "1")
    ctx.store.add_event("iris", VERSION_UPDATE, "Version 2 failed: no wheel", "2")
    ctx.store.add_event("iris", VERSION_UPDATE, "internal detail", "2", internal=True)
    html = ctx.page("/serving/model?name=iris&tab=events")
    assert html.index("Version 2 failed") < html.index("Version 1 is ready") and "internal detail" not in html
    v2 = ctx.page("/serving/version?name=iris&version=2&tab=events")
    assert "Version 2 failed" in v2 and "Version 1 is ready" not in v2


def test_version_logs(ctx: Ctx) -> None:
    ctx.serve_iris()
    html = ctx.page("/serving/version?name=iris&version=3")
    assert "build line 0" in html and "scoring server 3 listening" in html and "Pending" in html
    assert "<html" not in ctx.page("/serving/version?name=iris&version=3&partial=1")


def test_an_unexpected_failure_is_a_page_without_details(ctx: Ctx) -> None:
    ctx.serve_iris()
    ctx.runtime.broken = True
    html = ctx.page("/serving/model?name=iris", 500)
    assert "could not be shown" in html and "/secret/path" not in html


def _mlmodel(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "MLmodel").write_text("saved_input_example_info:\n  artifact_path: input_example.json\n"
                               "  type: dataframe\n  pandas_orient: split\n")
    (d / "input_example.json").write_text(json.dumps({"columns": ["x"], "data": [[1.5]]}))
    return d


def test_load_example(ctx: Ctx, tmp_path: Path) -> None:
    ctx.serve_iris()
    ctx.store.upsert_deployment("iris", "1", model_dir=str(_mlmodel(tmp_path / "v1")))
    r = ctx.client.get("/serving/example?name=iris&version=1")
    assert r.status_code == 200 and json.loads(r.get_json()["body"]) == [{"x": 1.5}]
    # Not downloaded: only the MLmodel and the example come from the registry.
    ctx.registry.files[("iris", "3")] = _mlmodel(tmp_path / "artifacts")
    r = ctx.client.get("/serving/example?name=iris&version=3")
    assert r.status_code == 200 and r.get_json()["content_type"] == "application/json; format=pandas-records"
    r = ctx.client.get("/serving/example?name=iris&version=2")
    assert r.status_code == 404 and "no model files" in r.get_json()["message"]
    r = ctx.client.get("/serving/example?name=iris&version=../../x")
    assert r.status_code == 400 and "not a model version number" in r.get_json()["message"]
    r = ctx.client.get("/serving/example?version=1")  # no name: the client's mistake, not "registry down"
    assert r.status_code == 400 and "Which model" in r.get_json()["message"]
    ctx.registry.down = True
    r = ctx.client.get("/serving/example?name=iris&version=2")
    assert r.status_code == 503 and "unreachable" in r.get_json()["message"]


def test_metrics_endpoint_and_metric_history(ctx: Ctx) -> None:
    ctx.serve_iris()
    state = MetricsState()
    state.observe(RouteKey("iris", "1", "Production"), Access(1000.0, "/model/iris/Production/invocations", 200,
                                                              0.012, "u"))
    save_state(ctx.store, state)
    r = ctx.client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.get_data(as_text=True)
    assert 'modelserve_requests_total{model="iris",version="1",route="Production",code="200"} 1' in text
    assert 'modelserve_version_state{model="iris",version="3",state="VERSION_STATE_PENDING"} 1' in text
    api = "/api/2.0/preview/mlflow/endpoints/get-metric-history"
    got: Any = ctx.client.get(f"{api}?registered_model_name=iris").get_json()
    assert {"key": "requests", "value": 1, "timestamp": 1_000_000} in got["metrics"]
    assert ctx.client.get(f"{api}?registered_model_name=iris&start_timestamp=x").status_code == 400
    assert ctx.client.get(f"{api}?registered_model_name=empty").status_code == 400  # not served
