"""``modelserve box``: what it sends to the API and how it prints the answer; ``modelserve
admin-password``: the kept password, or a clear error."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from supervisor import cli

BOX = {"network_access": True, "memory_mb": 4096, "cpus": 0.5, "max_processes": 512, "replicas": 2, "tmp_mb": 256,
       "identity": "own_uid", "uid": 70001, "using_defaults": ["max_processes"], "updated_by": "boss",
       "update_time": 1_700_000_000_000}


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, Any]]]:
    sent: list[tuple[str, str, dict[str, Any]]] = []

    def call(self: cli.Client, method: str, op: str, api: str = cli.API, **params: Any) -> dict[str, Any]:
        assert api == "/api/2.0/modelserve/served-models"
        sent.append((method, op, params))
        return {"registered_model_name": params["registered_model_name"], "box": BOX}

    monkeypatch.setattr(cli.Client, "call", call)
    monkeypatch.setattr(cli, "credentials", lambda settings: None)
    return sent


def run(*args: str) -> Any:
    result = CliRunner().invoke(cli.main, ["--url", "http://gw", "box", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_without_options_it_prints_the_box(calls: list[Any]) -> None:
    out = run("iris")
    assert calls == [("GET", "get-box", {"registered_model_name": "iris"})]
    assert out.splitlines()[:6] == ["iris: runs as uid 70001", "  network    on", "  memory     4096 MiB",
                                    "  cpus       0.5", "  processes  512  (default)", "  replicas   2"]


def test_options_send_only_what_was_given_and_default_as_null(calls: list[Any]) -> None:
    run("iris", "--network", "off", "--memory-mb", "default", "--cpus", "1.5", "--replicas", "3")
    assert calls == [("POST", "update-box", {"registered_model_name": "iris", "network_access": False,
                                             "memory_mb": None, "cpus": 1.5, "replicas": 3})]


def test_a_bad_number_is_refused_before_any_call(calls: list[Any]) -> None:
    result = CliRunner().invoke(cli.main, ["--url", "http://gw", "box", "iris", "--max-processes", "many"])
    assert result.exit_code == 2 and "neither a number nor 'default'" in result.output and calls == []


def test_json(calls: list[Any]) -> None:
    import json

    assert json.loads(run("iris", "--json")) == BOX


def test_admin_password_prints_the_kept_one_or_says_why_not(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSERVE_ADMIN_PASSWORD", raising=False)
    monkeypatch.setenv("MODELSERVE_SECRETS_DIR", str(tmp_path))
    missing = CliRunner().invoke(cli.main, ["admin-password"])
    assert missing.exit_code == 1 and "no admin password in" in missing.output
    (tmp_path / "admin_password").write_text("s3cret-from-the-volume\n")
    shown = CliRunner().invoke(cli.main, ["admin-password"])
    assert shown.exit_code == 0 and shown.output == "s3cret-from-the-volume\n"
