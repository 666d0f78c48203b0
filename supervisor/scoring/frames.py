"""Cheap DataFrame plumbing for the scoring server's hot path.

pandas builds a one-row DataFrame from a list of lists in about a hundred microseconds (per-column
type inference, a new column Index of Arrow strings every time) and answers ``frame.dtypes`` by
building a Series: for a tiny model that is more than the prediction. Each helper here gives
exactly what the general pandas call would give, only when that is certain, and otherwise calls
it: rows that are all Python floats make a float64 frame whatever pandas infers per column, so
they go through one ``np.array``; column Indexes are reused for column lists seen before.
Imports nothing from the supervisor (runs in the model's environment).
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

_INDEXES: dict[tuple[str, ...], pd.Index] = {}
_MAX_INDEXES = 256


def column_index(columns: list[Any]) -> Any:
    """A shared, immutable pandas Index for a list of column names (the list itself if unusual)."""
    if not all(type(c) is str for c in columns):
        return columns
    key = tuple(columns)
    index = _INDEXES.get(key)
    if index is None:
        if len(_INDEXES) >= _MAX_INDEXES:
            _INDEXES.clear()  # a client inventing column lists cannot grow memory without bound
        index = _INDEXES[key] = pd.Index(columns)
    return index


def all_floats(rows: list[Any]) -> bool:
    # The types are gathered by map/set in C: a Python-level loop over every value cost about a
    # millisecond for 1,000 rows of 4 columns, as much as parsing their JSON.
    if set(map(type, rows)) != {list}:
        return False
    return set(map(type, chain.from_iterable(rows))) <= {float}


def float_frame(rows: list[Any], columns: list[Any] | None) -> pd.DataFrame | None:
    """``pd.DataFrame(rows, columns=columns)`` when every value is a float, else None."""
    if not rows or not all_floats(rows):
        return None
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError:  # ragged rows: let pandas say what is wrong
        return None
    if values.ndim != 2 or (columns is not None and values.shape[1] != len(columns)):
        return None
    return pd.DataFrame(values, columns=column_index(columns) if columns is not None else None, copy=False)


def records_frame(records: list[Any]) -> pd.DataFrame | None:
    """``pd.DataFrame.from_records(records)`` when every record has the same keys and float values."""
    if not records or type(records[0]) is not dict:
        return None
    keys = records[0].keys()
    if not all(type(r) is dict and r.keys() == keys for r in records):
        return None
    names = list(keys)
    return float_frame([[r[k] for k in names] for r in records], names)


def column_dtypes(frame: pd.DataFrame) -> tuple[Any, ...]:
    """``tuple(frame.dtypes)`` without building a Series."""
    try:
        return tuple(frame._mgr.get_dtypes())
    except AttributeError:  # pragma: no cover - a pandas without the block manager API
        return tuple(frame.dtypes)


def merge_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The frames one under the other, as ``pd.concat(frames, ignore_index=True)`` gives them.

    Frames of one numeric dtype throughout (the usual request) are stacked as arrays: the same
    values and dtype, without concat's per-frame index and block bookkeeping."""
    first = frames[0]
    dtypes = set(column_dtypes(first))
    if len(dtypes) == 1 and next(iter(dtypes)).kind in "biuf":
        return pd.DataFrame(np.concatenate([f.to_numpy() for f in frames]), columns=first.columns, copy=False)
    return pd.concat(frames, ignore_index=True)
