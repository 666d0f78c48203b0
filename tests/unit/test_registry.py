"""The registry client's reading of MLflow's refusals: which mean "no such model", which do not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import RestException

from supervisor.registry import Registry


class _Refusing:
    def __init__(self, error_code: str) -> None:
        self.error_code = error_code

    def get_registered_model(self, name: str) -> Any:
        raise RestException({"error_code": self.error_code, "message": f"refused {name!r}"})

    def get_model_version_download_uri(self, name: str, version: str) -> Any:
        raise RestException({"error_code": self.error_code, "message": f"refused {name!r}"})


def test_a_name_mlflow_refuses_is_no_model_not_an_error() -> None:
    # Found by schemathesis: get-status?registered_model_name=a:b answered 500 (MLflow: names
    # cannot contain '/' or ':').
    registry = Registry.__new__(Registry)
    registry.client = _Refusing("INVALID_PARAMETER_VALUE")  # type: ignore[assignment]
    assert registry.get_model("a:b") is None


def test_fetching_files_of_a_version_that_cannot_exist_fetches_nothing(tmp_path: Path) -> None:
    # Found by schemathesis: /serving/example without a name answered 503 "registry unreachable".
    for code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
        registry = Registry.__new__(Registry)
        registry.client = _Refusing(code)  # type: ignore[assignment]
        assert list(registry.fetch_files("", "1", ["MLmodel"], tmp_path / code).iterdir()) == []


def test_other_refusals_still_raise() -> None:
    registry = Registry.__new__(Registry)
    registry.client = _Refusing("PERMISSION_DENIED")  # type: ignore[assignment]
    with pytest.raises(RestException):
        registry.get_model("a")
