"""The serving pages and /metrics with access control on: sign-in, read and manage rights."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from supervisor.store import READY
from tests.unit.api.conftest import access_app, basic

READER, BOSS, ROOT = basic("reader", "readerpw"), basic("boss", "bosspw"), basic("root", "rootpw")


@pytest.fixture()
def client(tmp_path: Path) -> FlaskClient:
    app, store = access_app(tmp_path, ("open", "secret"), {("reader", "open"): "READ", ("boss", "open"): "MANAGE"})
    for port, name in enumerate(("open", "secret"), start=1):
        store.enable(name)
        store.upsert_deployment(name, "1", state=READY, port=port)
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


def test_the_box_is_shown_to_readers_and_its_form_only_to_managers(client: FlaskClient) -> None:
    reader = client.get("/serving/model?name=open", headers=READER).get_data(as_text=True)
    assert "<h2>Box</h2>" in reader and "2048 MiB" in reader and 'id="box-form"' not in reader
    boss = client.get("/serving/model?name=open", headers=BOSS).get_data(as_text=True)
    assert 'id="box-form"' in boss and 'data-api="/api/2.0/modelserve/served-models/update-box"' in boss
    assert 'placeholder="default 2048"' in boss
    saved = client.post("/api/2.0/modelserve/served-models/update-box", headers=BOSS,
                        json={"registered_model_name": "open", "network_access": True, "cpus": 1.5})
    assert saved.status_code == 200
    boss = client.get("/serving/model?name=open", headers=BOSS).get_data(as_text=True)
    assert 'name="network_access" checked' in boss and 'value="1.5"' in boss and "by boss" in boss
    live = client.get("/serving/model?name=open&partial=1", headers=BOSS).get_data(as_text=True)
    assert "box-form" not in live  # the live panel is redrawn every 2 s; the form is not in it
