"""The serving pages and /metrics with access control on: sign-in, read and manage rights."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from supervisor.api.app import create_app
from supervisor.auth.access import Access
from supervisor.registry import RegistryModel, RegistryVersion
from supervisor.settings import Settings
from supervisor.store import READY, Store
from tests.support import FakeRegistry, FakeUsers
from tests.unit.api.test_auth import basic
from tests.unit.api.test_pages import FakeRuntime

READER, BOSS, ROOT = basic("reader", "readerpw"), basic("boss", "bosspw"), basic("root", "rootpw")


@pytest.fixture()
def client(tmp_path: Path) -> FlaskClient:
    settings = Settings(data_dir=tmp_path)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    users = FakeUsers()
    users.add("root", "rootpw", admin=True)
    users.add("reader", "readerpw")
    users.add("boss", "bosspw")
    users.grants.update({("reader", "open"): "READ", ("boss", "open"): "MANAGE"})
    registry = FakeRegistry({n: RegistryModel(n, (RegistryVersion("1"),)) for n in ("open", "secret")})
    for port, name in enumerate(("open", "secret"), start=1):
        store.enable(name)
        store.upsert_deployment(name, "1", state=READY, port=port)
    app = create_app(settings, store=store, registry=registry, runtime=FakeRuntime(),  # type: ignore[arg-type]
                     access=Access(settings, store, users))  # type: ignore[arg-type]
    return app.test_client()


def test_pages_ask_for_credentials(client: FlaskClient) -> None:
    for url in ("/serving/", "/serving/model?name=open", "/serving/example?name=open&version=1"):
        r = client.get(url)
        assert r.status_code == 401, url
        assert r.headers["WWW-Authenticate"] == 'Basic realm="modelserve"'
        assert "Traceback" not in r.get_data(as_text=True)
    assert client.get("/serving/", headers=basic("reader", "wrong")).status_code == 401


def test_a_reader_sees_only_what_they_may_read(client: FlaskClient) -> None:
    html = client.get("/serving/", headers=READER).get_data(as_text=True)
    assert 'data-model="open"' in html and 'data-model="secret"' not in html
    assert "signed in as reader" in html
    assert client.get("/serving/model?name=secret", headers=READER).status_code == 403
    assert client.get("/serving/version?name=secret&version=1", headers=READER).status_code == 403
    assert client.get("/serving/example?name=secret&version=1", headers=READER).status_code == 403
    page = client.get("/serving/model?name=open", headers=READER)
    assert page.status_code == 200
    assert "Stop" not in page.get_data(as_text=True).split("<main>", 1)[1].split("<script>", 1)[0]


def test_manage_right_offers_stop(client: FlaskClient) -> None:
    html = client.get("/serving/model?name=open", headers=BOSS).get_data(as_text=True)
    assert "Stop" in html.split("<main>", 1)[1].split("<script>", 1)[0]


def test_metrics_need_a_credential_and_show_readable_models(client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 401
    reader = client.get("/metrics", headers=READER).get_data(as_text=True)
    assert 'model="open"' in reader and 'model="secret"' not in reader
    admin = client.get("/metrics", headers=ROOT).get_data(as_text=True)
    assert 'model="open"' in admin and 'model="secret"' in admin
