"""Error cases against the real gateway: bad input, unknown paths, oversize bodies, hostile model
names, and a version whose environment cannot be built while another version keeps serving."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pandas as pd
import pytest
import requests

from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e

NAME = "errors-model"
# Quotes, braces, semicolons, a dollar, spaces, a slash-like sequence: all must stay data.
HOSTILE = 'evil "name"; } return 200 pwned; { $host %2F ..'


@pytest.fixture(scope="module")
def served(system: System, register: Any) -> str:
    register(NAME)
    assert system.api("POST", "enable", registered_model_name=NAME).status_code == 200
    system.wait_version(NAME, "1", "VERSION_STATE_READY")
    return f"{system.url}/model/{NAME}/1/invocations"


def _json_error(r: requests.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert isinstance(body, dict) and "message" in body, body
    if code:
        assert body["error_code"] == code, body
    return body


def test_bad_json_is_a_clear_400(served: str) -> None:
    r = requests.post(served, data=b'{"dataframe_records": [', headers={"Content-Type": "application/json"},
                      timeout=30)
    _json_error(r, 400, "BAD_REQUEST")


def test_wrong_content_type_is_415(served: str) -> None:
    r = requests.post(served, data=b"hello", headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 415
    assert "error_code" in r.json()


def test_unknown_model_and_version_are_json_404(system: System, served: str) -> None:
    _json_error(requests.post(f"{system.url}/model/no-such-model/1/invocations", json=[{}], timeout=30), 404,
                "RESOURCE_DOES_NOT_EXIST")
    _json_error(requests.post(f"{system.url}/model/{NAME}/99/invocations", json=[{}], timeout=30), 404,
                "RESOURCE_DOES_NOT_EXIST")


def test_oversize_body_is_json_413(served: str) -> None:
    r = requests.post(served, data=b"[" + b" " * (17 * 1024 * 1024) + b"]",
                      headers={"Content-Type": "application/json"}, timeout=60)
    _json_error(r, 413)


def test_legacy_api_errors(system: System, register: Any) -> None:
    _json_error(system.api("GET", "get-status", registered_model_name="never-registered"), 404,
                "RESOURCE_DOES_NOT_EXIST")
    register("registered-not-served")
    _json_error(system.api("GET", "get-status", registered_model_name="registered-not-served"), 400,
                "INVALID_PARAMETER_VALUE")
    _json_error(system.api("POST", "enable"), 400, "INVALID_PARAMETER_VALUE")
    _json_error(system.api("POST", "enable", registered_model_name="never-registered"), 404,
                "RESOURCE_DOES_NOT_EXIST")
    _json_error(requests.get(f"{system.url}/api/2.0/preview/mlflow/endpoints/no-such-op", timeout=30), 404)


def test_hostile_model_name_is_served_and_injects_nothing(system: System, register: Any, served: str,
                                                          iris: pd.DataFrame) -> None:
    register(HOSTILE)
    assert system.api("POST", "enable", registered_model_name=HOSTILE).status_code == 200
    system.wait_version(HOSTILE, "1", "VERSION_STATE_READY")
    rows = iris.drop(columns=["target"]).head(3).to_dict(orient="records")
    r = requests.post(f"{system.url}/model/{quote(HOSTILE, safe='')}/1/invocations", json=rows, timeout=30)
    assert r.status_code == 200, r.text
    assert len(r.json()) == 3
    # The directive in the name did not become one: no route answers "pwned".
    r = requests.post(f"{system.url}/model/evil/1/invocations", json=rows, timeout=30)
    assert r.status_code == 404 and "pwned" not in r.text
    # Other models still served.
    assert requests.post(served, json=rows, timeout=30).status_code == 200
    assert system.api("POST", "disable", registered_model_name=HOSTILE).status_code == 200


def test_failed_environment_fails_that_version_only(system: System, register: Any, served: str,
                                                    iris: pd.DataFrame) -> None:
    version = register(NAME, extra_pip_requirements=["modelserve-no-such-package-xyz==0.0.1"])
    failed = system.wait_version(NAME, version, "VERSION_STATE_FAILED")
    assert "environment" in failed["state_message"].lower()
    logs = system.api("POST", "get-version-logs", registered_model_name=NAME,
                      endpoint_version_name=version).json()["logs"]
    assert "modelserve-no-such-package-xyz" in logs
    rows = iris.drop(columns=["target"]).head(2).to_dict(orient="records")
    assert requests.post(served, json=rows, timeout=30).status_code == 200
    r = requests.post(f"{system.url}/model/{NAME}/{version}/invocations", json=rows, timeout=30)
    assert r.status_code == 404
    status = system.api("GET", "get-status", registered_model_name=NAME).json()["endpoint_status"]
    assert status["state"] == "ENDPOINT_STATE_READY"
