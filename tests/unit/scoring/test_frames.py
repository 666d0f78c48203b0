"""The cheap frame builders give exactly what the general pandas calls give, or step aside."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from supervisor.scoring.frames import column_dtypes, column_index, float_frame, merge_frames, records_frame


@pytest.mark.parametrize("rows", [
    [[1.5, 2.0, -3.25]],
    [[0.1, 0.2, 0.3], [4.0, 5.0, 6.0], [1e300, -0.0, 7.5]],
])
def test_float_rows_build_the_frame_pandas_builds(rows: list[list[float]]) -> None:
    cols = ["a", "b", "c"]
    fast = float_frame(rows, cols)
    assert fast is not None
    pd.testing.assert_frame_equal(fast, pd.DataFrame(rows, columns=cols))
    assert fast.columns is column_index(cols)  # shared, not rebuilt per request
    unnamed = float_frame(rows, None)
    assert unnamed is not None
    pd.testing.assert_frame_equal(unnamed, pd.DataFrame(rows))


@pytest.mark.parametrize("rows", [
    [[1, 2.0, 3.0]],  # an int column pandas would keep as int64
    [[1.0, None, 3.0]],
    [[1.0, 2.0], [1.0]],  # ragged
    [[1.0, "x", 2.0]],
    [[True, 1.0, 2.0]],
    [],
    [(1.0, 2.0, 3.0)],
])
def test_anything_else_is_left_to_pandas(rows: list[Any]) -> None:
    assert float_frame(rows, ["a", "b", "c"]) is None


def test_wrong_width_is_left_to_pandas() -> None:
    assert float_frame([[1.0, 2.0]], ["a", "b", "c"]) is None


def test_records_build_the_frame_pandas_builds() -> None:
    records = [{"b": 1.0, "a": 2.5}, {"a": 0.5, "b": -1.0}]
    fast = records_frame(records)
    assert fast is not None
    pd.testing.assert_frame_equal(fast, pd.DataFrame.from_records(records))
    assert records_frame([{"a": 1.0}, {"b": 2.0}]) is None  # different keys: pandas fills NaN
    assert records_frame([{"a": 1}]) is None
    assert records_frame([]) is None
    assert records_frame([[1.0]]) is None


def test_column_dtypes_and_merge_match_pandas() -> None:
    a = pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]})
    b = pd.DataFrame({"x": [5.0], "y": [6.0]}, index=[7])
    mixed = [pd.DataFrame({"x": [1], "y": ["s"]}), pd.DataFrame({"x": [2], "y": ["t"]})]
    for frames in ([a, b], [a], mixed, [a.astype(np.float32), b.astype(np.float32)]):
        pd.testing.assert_frame_equal(merge_frames(frames), pd.concat(frames, ignore_index=True))
        assert column_dtypes(frames[0]) == tuple(frames[0].dtypes)
