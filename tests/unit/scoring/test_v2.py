"""The Open Inference Protocol (V2): decoding, encoding and error JSON (pure; the real server's V2 paths
are tested in test_server.py, on the scoring tests' shared server process)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from supervisor.scoring import v2
from tests.unit.scoring.conftest import COLS, v2_request

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def test_pd_columns_decode_to_the_frame_dataframe_split_gives() -> None:
    frame, rid = v2.decode(v2_request(ROWS, id="r1"), COLS)
    assert rid == "r1"
    expected = pd.DataFrame(ROWS, columns=COLS)
    pd.testing.assert_frame_equal(frame, expected)
    # Without the content type, tensors named after the model's columns mean the same.
    no_type = v2_request(ROWS)
    del no_type["parameters"]
    pd.testing.assert_frame_equal(v2.decode(no_type, COLS)[0], expected)


def test_one_2d_tensor_is_rows_of_the_models_columns() -> None:
    frame, _ = v2.decode({"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP64", "data": ROWS}]}, COLS)
    pd.testing.assert_frame_equal(frame, pd.DataFrame(ROWS, columns=COLS))
    flat, _ = v2.decode({"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP64",
                                     "data": sum(ROWS, [])}]}, COLS)
    pd.testing.assert_frame_equal(flat, frame)


def test_a_tensor_model_gets_an_array_of_the_shape_and_datatype() -> None:
    arr, _ = v2.decode({"inputs": [{"name": "t", "shape": [2, 2, 1], "datatype": "INT32",
                                    "data": [1, 2, 3, 4]}]}, None)
    assert isinstance(arr, np.ndarray) and arr.dtype == np.int32 and arr.shape == (2, 2, 1)
    frame, _ = v2.decode({"parameters": {"content_type": "pd"}, "inputs": [
        {"name": "a", "shape": [2, 1], "datatype": "INT64", "data": [1, 2]},
        {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]},
        {"name": "b", "shape": [2], "datatype": "BOOL", "data": [True, False]}]}, None)
    assert list(frame.columns) == ["a", "s", "b"]
    assert frame["a"].dtype == np.int64 and frame["b"].dtype == np.bool_ and frame["s"].tolist() == ["x", "y"]


@pytest.mark.parametrize(("body", "words"), [
    ([1], "JSON object"),
    ({}, "'inputs'"),
    ({"inputs": []}, "'inputs'"),
    ({"inputs": [5]}, "inputs[0]"),
    ({"inputs": [{"name": "", "shape": [1], "datatype": "FP64", "data": [1.0]}]}, "'name'"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FLOAT", "data": [1.0]}]}, "'datatype'"),
    ({"inputs": [{"name": "a", "shape": [-1], "datatype": "FP64", "data": [1.0]}]}, "'shape'"),
    ({"inputs": [{"name": "a", "shape": "1", "datatype": "FP64", "data": [1.0]}]}, "'shape'"),
    ({"inputs": [{"name": "a", "shape": [2], "datatype": "FP64", "data": [1.0]}]}, "needs 2"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": ["x"]}]}, "FP64"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": 1.0}]}, "'data'"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": [1]}]}, "strings"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "parameters": {"binary_data_size": 8}}]},
     "binary_data=False"),
    ({"id": 5, "inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]}]}, "'id'"),
    ({"parameters": [], "inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]}]}, "parameters"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]},
                 {"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]}]}, "same name"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]},
                 {"name": "b", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}]}, "same number of rows"),
    ({"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]},
                 {"name": "b", "shape": [1], "datatype": "FP64", "data": [1.0]}]}, "[rows, 1]"),
])
def test_bad_requests_are_refused_with_a_message(body: Any, words: str) -> None:
    with pytest.raises(v2.V2Error, match=None) as info:
        v2.decode(body, COLS)
    assert words in str(info.value)


def test_outputs_carry_shape_datatype_and_row_major_data() -> None:
    out = v2.encode(np.array([0, 2, 1]), "iris", "3", "r1")
    assert out == {"model_name": "iris", "model_version": "3", "id": "r1", "outputs": [
        {"name": "predictions", "shape": [3], "datatype": "INT64", "data": [0, 2, 1]}]}
    frame = pd.DataFrame({"p": [0.5, float("nan")], "label": ["a", "b"]})
    out = v2.encode(frame, "m", "1", None)
    assert out["parameters"] == {"content_type": "pd"} and "id" not in out
    assert out["outputs"] == [{"name": "p", "shape": [2], "datatype": "FP64", "data": [0.5, None]},
                              {"name": "label", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]
    assert v2.encode({"y": np.ones((2, 2), dtype=np.float32)}, "m", "1", None)["outputs"] == [
        {"name": "y", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 1.0, 1.0, 1.0]}]
    assert [v2.datatype(t) for t in (np.bool_, np.uint8, np.int32, np.float16, object)] == [
        "BOOL", "UINT8", "INT32", "FP16", "BYTES"]


def test_error_json_has_the_protocols_field_and_ours() -> None:
    assert v2.error_body("bad", "BAD_REQUEST") == {"error": "bad", "error_code": "BAD_REQUEST", "message": "bad"}
