"""The registry client's reading of MLflow's refusals: which mean "no such model", which do not."""

from __future__ import annotations

from typing import Any

import pytest
from mlflow.exceptions import RestException

from supervisor.registry import Registry


class _Refusing:
    def __init__(self, error_code: str) -> None:
        self.error_code = error_code

    def get_registered_model(self, name: str) -> Any:
        raise RestException({"error_code": self.error_code, "message": f"refused {name!r}"})


def test_a_name_mlflow_refuses_is_no_model_not_an_error() -> None:
    # Found by schemathesis: get-status?registered_model_name=a:b answered 500 (MLflow: names
    # cannot contain '/' or ':').
    registry = Registry.__new__(Registry)
    registry.client = _Refusing("INVALID_PARAMETER_VALUE")  # type: ignore[assignment]
    assert registry.get_model("a:b") is None


def test_other_refusals_still_raise() -> None:
    registry = Registry.__new__(Registry)
    registry.client = _Refusing("PERMISSION_DENIED")  # type: ignore[assignment]
    with pytest.raises(RestException):
        registry.get_model("a")
