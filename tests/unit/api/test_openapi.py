"""The OpenAPI document and the Flask app cannot drift apart: every route is documented, every
documented path is a route (or the gateway's scoring path), and the document is what the API serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask

from supervisor.api import openapi
from supervisor.api.app import create_app
from supervisor.settings import Settings
from supervisor.store import Store
from tests.support import FakeRegistry

METHODS = {"get", "post", "put", "patch", "delete"}


class _Runtime:
    name = "process"


@pytest.fixture()
def app(tmp_path: Path) -> Flask:
    return create_app(Settings(data_dir=tmp_path, auth=False), store=Store(f"sqlite:///{tmp_path / 's.db'}"),
                      registry=FakeRegistry(), runtime=_Runtime())  # type: ignore[arg-type]


def _routes(app: Flask) -> set[tuple[str, str]]:
    # HEAD and OPTIONS are added by Flask to every route; they are not part of the contract.
    # Flask's <name> is OpenAPI's {name}.
    return {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), m.lower()) for rule in app.url_map.iter_rules()
            for m in (rule.methods or ()) if m not in ("HEAD", "OPTIONS")}


def _documented(gateway: bool) -> set[tuple[str, str]]:
    doc = openapi.document()
    return {(path, m) for path, item in doc["paths"].items() for m in item
            if m in METHODS and (item.get("x-served-by") == "gateway") == gateway}


def test_every_route_is_documented_and_every_documented_path_is_a_route(app: Flask) -> None:
    routes, documented = _routes(app), _documented(gateway=False)
    assert routes - documented == set(), "routes missing from supervisor/api/openapi.yaml"
    assert documented - routes == set(), "documented in supervisor/api/openapi.yaml but not routed"


def test_the_scoring_endpoint_and_its_request_formats_are_documented() -> None:
    assert _documented(gateway=True) == {("/model/{name}/{ref}/invocations", "post"),
                                          ("/serving-endpoints/{name}/invocations", "post"),
                                          ("/serving-endpoints/{name}/served-models/{entity}/invocations", "post")}
    score = openapi.document()["paths"]["/model/{name}/{ref}/invocations"]["post"]
    content = score["requestBody"]["content"]
    assert {"application/json", "text/csv", "application/json-numpy-split"} <= set(content)
    assert set(content["application/json"]["examples"]) >= {
        "dataframe_split", "dataframe_records", "instances", "inputs"}


def test_the_document_is_valid_openapi_with_unique_operation_ids() -> None:
    import schemathesis

    schema = schemathesis.openapi.from_dict(openapi.document())
    ids = []
    for result in schema.get_all_operations():
        op = result.ok()  # raises on an operation schemathesis cannot understand
        ids.append(op.definition.raw["operationId"])
    assert len(ids) == len(set(ids)) and len(ids) > 30


def test_the_api_serves_the_document_without_credentials(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, auth=True), store=Store(f"sqlite:///{tmp_path / 's.db'}"),
                     registry=FakeRegistry(), runtime=_Runtime())  # type: ignore[arg-type]
    r = app.test_client().get(openapi.PATH)
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert r.get_json() == openapi.document()
    assert "/ajax-api/2.0/preview/mlflow/endpoints/enable" in r.get_json()["paths"]


def test_no_static_route_serves_files_from_the_working_directory(app: Flask) -> None:
    assert not any(rule.rule.startswith("/static") for rule in app.url_map.iter_rules())
