"""``modelserve endpoints``: the requests it makes and what it prints."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from supervisor import cli


def endpoint(state: str = "NOT_UPDATING") -> dict[str, Any]:
    entity = {"name": "iris-1", "entity_name": "iris", "entity_version": "1",
              "state": {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""}}
    return {"name": "ep", "id": "abc", "creator": "boss", "state": {"ready": "READY", "config_update": state},
            "config": {"config_version": 1, "served_entities": [entity],
                       "traffic_config": {"routes": [{"served_model_name": "iris-1", "traffic_percentage": 100}]}}}


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, Any]]]:
    sent: list[tuple[str, str, dict[str, Any]]] = []

    def call(self: cli.Client, method: str, op: str, api: str = cli.API, **params: Any) -> dict[str, Any]:
        assert api == "/api/2.0/serving-endpoints"
        sent.append((method, op, params))
        return {"endpoints": []} if op == "" and method == "GET" else endpoint()

    monkeypatch.setattr(cli.Client, "call", call)
    monkeypatch.setattr(cli, "credentials", lambda settings: None)
    return sent


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli.main, ["--url", "http://gw", "endpoints", *args])
    assert result.exit_code == code, result.output
    return result.output


def test_create_and_update_send_entities_and_a_split(calls: list[Any]) -> None:
    out = run("create", "ep", "--entity", "iris:1")
    assert calls[0] == ("POST", "", {"name": "ep", "config": {"served_entities": [
        {"entity_name": "iris", "entity_version": "1"}]}})
    assert "ep  READY  NOT_UPDATING" in out and "iris-1" in out and "100%" in out
    run("update", "ep", "--entity", "iris:1=80", "--entity", "iris:@champion=20")
    assert calls[1] == ("PUT", "ep/config", {
        "served_entities": [{"entity_name": "iris", "entity_version": "1"},
                            {"entity_name": "iris", "entity_version": "@champion"}],
        "traffic_config": {"routes": [{"served_model_name": "iris-1", "traffic_percentage": "80"},
                                      {"served_model_name": "iris-champion", "traffic_percentage": "20"}]}})


def test_get_list_delete_and_bad_entities(calls: list[Any]) -> None:
    assert '"id": "abc"' in run("get", "ep", "--json")
    assert run("list") == "no serving endpoints\n"
    assert run("delete", "ep") == "endpoint ep deleted\n"
    assert [c[:2] for c in calls] == [("GET", "ep"), ("GET", ""), ("DELETE", "ep")]
    assert "MODEL:VERSION" in run("create", "ep", "--entity", "no-version", code=2)
    assert "give --entity" in run("create", "ep", code=2)


class FakeResponse:
    def __init__(self, status: int, content: bytes) -> None:
        self.status_code, self.content, self.text = status, content, content.decode()

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def json(self) -> Any:
        import json
        return json.loads(self.content)

    def iter_content(self, size: int) -> list[bytes]:
        return [self.content[i:i + size] for i in range(0, len(self.content), size)]


def test_inference_table_is_downloaded_to_a_file_or_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    asked: list[tuple[str, dict[str, Any]]] = []
    answers = [FakeResponse(200, b'{"request_id": "a"}\n'),
               FakeResponse(403, b'{"error_code": "PERMISSION_DENIED", "message": "needs CAN_MANAGE"}')]

    def get(self: Any, url: str, params: dict[str, Any], timeout: float, stream: bool) -> FakeResponse:
        asked.append((url, params))
        return answers.pop(0)

    monkeypatch.setattr(cli.requests.Session, "get", get)
    monkeypatch.setattr(cli, "credentials", lambda settings: None)
    out = tmp_path / "t.parquet"
    assert "wrote" in run("inference-table", "ep", "--format", "parquet", "--since-ms", "5", "-o", str(out))
    assert out.read_bytes() == b'{"request_id": "a"}\n'
    assert asked == [("http://gw/api/2.0/modelserve/serving-endpoints/ep/inference-table",
                      {"format": "parquet", "since_ms": 5})]
    assert "PERMISSION_DENIED: needs CAN_MANAGE" in run("inference-table", "ep", "-o", str(out), code=1)
    run("inference-table", "ep", "--format", "csv", code=2)
