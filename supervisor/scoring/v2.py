"""The Open Inference Protocol (V2, what KServe, MLServer and Triton clients speak) over the same model.

A V2 ``infer`` request is decoded into the very input ``/invocations`` would build for the same
rows (a DataFrame with the model's columns, or an array for a tensor model), handed to the same
``Scorer.predict`` (so the same schema shortcut, batching and errors apply), and the predictions
are encoded as V2 output tensors. Inputs become a DataFrame the way MLServer's ``pd`` content type
does it (each input tensor one column, named by the tensor), which is also what a request
without a content type means when its tensors name the model's columns; one 2-D tensor as wide
as the model's column signature is rows of those columns. Anything else is an array of the
tensor's shape and datatype. Answers are JSON tensors, also to a client that asks for Triton's
binary-data extension (its clients read either); binary request tensors are refused. Errors are ``{"error": ...}`` (the protocol's form, which the
clients read) plus the ``error_code``/``message`` every other answer of ours has.
Pure functions only, no HTTP; imports nothing from the supervisor (runs in the model's environment).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

if __package__:
    from .frames import column_index
else:  # pragma: no cover - exercised by the real server processes
    from frames import column_index  # type: ignore[import-not-found,no-redef]

DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": object,
}
# MLflow's column types, as the V2 datatypes of the metadata answer.
SCHEMA_TYPES = {"boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32", "double": "FP64",
                "string": "BYTES", "binary": "BYTES", "datetime": "BYTES"}
MAX_DIMS = 32


class V2Error(Exception):
    """A client's mistake in a V2 request: HTTP 400 with the message."""


def error_body(message: str, error_code: str = "BAD_REQUEST") -> dict[str, str]:
    return {"error": message, "error_code": error_code, "message": message}


def datatype(dtype: Any) -> str:
    """The V2 datatype of a numpy dtype (strings, objects and dates are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return "BOOL"
    if dtype.kind in "iu":
        return f"{'U' if dtype.kind == 'u' else ''}INT{dtype.itemsize * 8}"
    if dtype.kind == "f" and dtype.itemsize in (2, 4, 8):
        return f"FP{dtype.itemsize * 8}"
    return "BYTES"


def _shape(raw: Any, where: str) -> list[int]:
    if (not isinstance(raw, list) or len(raw) > MAX_DIMS
            or not all(type(d) is int and d >= 0 for d in raw)):
        raise V2Error(f"{where}: 'shape' must be a list of non-negative integers")
    return raw


def _tensor(obj: Any, i: int) -> tuple[str, np.ndarray[Any, Any], str | None]:
    """(name, values in the tensor's shape and datatype, the tensor's content type)."""
    if not isinstance(obj, dict):
        raise V2Error(f"inputs[{i}] must be a JSON object")
    name, dtype_name, data = obj.get("name"), obj.get("datatype"), obj.get("data")
    where = f"input {name!r}" if isinstance(name, str) else f"inputs[{i}]"
    if not isinstance(name, str) or not name:
        raise V2Error(f"{where}: 'name' must be a non-empty string")
    if dtype_name not in DATATYPES:
        raise V2Error(f"{where}: 'datatype' must be one of {sorted(DATATYPES)}, not {dtype_name!r}")
    shape = _shape(obj.get("shape"), where)
    params = obj.get("parameters")
    if isinstance(params, dict) and "binary_data_size" in params:
        raise V2Error(f"{where}: binary tensor data (a Triton extension) is not supported; send 'data' as JSON "
                      "(tritonclient: set_data_from_numpy(..., binary_data=False))")
    if not isinstance(data, list):
        raise V2Error(f"{where}: 'data' must be a list (row-major, flat or nested)")
    content_type = params.get("content_type") if isinstance(params, dict) else None
    try:
        flat = np.asarray(data, dtype=DATATYPES[dtype_name]).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise V2Error(f"{where}: 'data' does not hold {dtype_name} values: {exc}") from None
    if dtype_name == "BYTES" and not all(isinstance(v, str) for v in flat):
        raise V2Error(f"{where}: BYTES data must be strings")
    if flat.size != math.prod(shape):
        raise V2Error(f"{where}: 'data' has {flat.size} values, 'shape' {shape} needs {math.prod(shape)}")
    return name, flat.reshape(shape), content_type if isinstance(content_type, str) else None


def _column(name: str, values: np.ndarray[Any, Any], rows: int | None) -> np.ndarray[Any, Any]:
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise V2Error(f"input {name!r}: a DataFrame column must have shape [rows] or [rows, 1]")
    if rows is not None and len(values) != rows:
        raise V2Error(f"input {name!r}: every column must have the same number of rows")
    return values


def decode(obj: Any, columns: list[str] | None) -> tuple[Any, str | None]:
    """An ``infer`` request -> (the model's input, the request's id)."""
    if not isinstance(obj, dict):
        raise V2Error("an inference request must be a JSON object with 'inputs'")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error("'inputs' must be a non-empty list of tensors")
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, str):
        raise V2Error("'id' must be a string")
    params = obj.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise V2Error("'parameters' must be a JSON object")
    tensors = [_tensor(t, i) for i, t in enumerate(inputs)]
    names = [n for n, _, _ in tensors]
    if len(set(names)) != len(names):
        raise V2Error("two inputs have the same name")
    as_frame = (params or {}).get("content_type") == "pd" or len(tensors) > 1 or bool(
        columns and set(names) <= set(columns))
    if as_frame:
        rows: int | None = None
        cols: dict[str, np.ndarray[Any, Any]] = {}
        for name, values, _ in tensors:
            cols[name] = _column(name, values, rows)
            rows = len(cols[name])
        index = column_index(names) if names == columns else names
        kinds = {v.dtype for v in cols.values()}
        if len(kinds) == 1 and next(iter(kinds)).kind in "biuf":
            # One numeric dtype throughout (the usual request): one 2-D block, as pandas would
            # consolidate the columns anyway, without its per-column construction.
            return pd.DataFrame(np.column_stack(list(cols.values())), columns=index, copy=False), rid
        return pd.DataFrame(cols, columns=index, copy=False), rid
    name, values, _ = tensors[0]
    if columns and values.ndim == 2 and values.shape[1] == len(columns):
        # Rows of a table: the model's own columns, in its order (what dataframe_split gives).
        return pd.DataFrame(values, columns=column_index(columns), copy=False), rid
    return values, rid


def _output(name: str, values: Any) -> dict[str, Any]:
    arr = np.asarray(values)
    kind = datatype(arr.dtype)
    if kind == "BYTES":
        data = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in arr.reshape(-1)]
    else:
        data = arr.reshape(-1).tolist()
        if arr.dtype.kind == "f":
            data = [None if math.isnan(v) or math.isinf(v) else v for v in data]
    return {"name": name, "shape": list(arr.shape), "datatype": kind, "data": data}


def encode(predictions: Any, model: str, version: str, rid: str | None) -> dict[str, Any]:
    """Predictions -> an ``infer`` answer: a DataFrame one tensor per column (content type
    ``pd``, as MLServer answers), a dict one per key, anything else one tensor ``predictions``."""
    out: dict[str, Any] = {"model_name": model, "model_version": version}
    if rid is not None:
        out["id"] = rid
    if isinstance(predictions, pd.DataFrame):
        out["parameters"] = {"content_type": "pd"}
        out["outputs"] = [_output(str(c), predictions[c].to_numpy()) for c in predictions.columns]
    elif isinstance(predictions, dict):
        out["outputs"] = [_output(str(k), v) for k, v in predictions.items()]
    else:
        if isinstance(predictions, pd.Series):
            predictions = predictions.to_numpy()
        out["outputs"] = [_output("predictions", predictions)]
    return out


def _spec_tensors(schema: Any) -> list[dict[str, Any]]:
    if schema is None:
        return []
    tensors = []
    for i, spec in enumerate(schema.inputs):
        name = getattr(spec, "name", None) or f"input-{i}"
        if schema.is_tensor_spec():
            tensors.append({"name": name, "datatype": datatype(spec.type),
                            "shape": [int(d) for d in spec.shape]})
        else:
            kind = getattr(getattr(spec, "type", None), "name", "")
            tensors.append({"name": name, "datatype": SCHEMA_TYPES.get(kind, "BYTES"), "shape": [-1]})
    return tensors


def metadata(model: Any, name: str, version: str) -> dict[str, Any]:
    """The model metadata answer: its signature's inputs and outputs as V2 tensors."""
    meta = getattr(model, "metadata", None)
    try:
        inputs = _spec_tensors(meta.get_input_schema()) if meta is not None else []
        outputs = _spec_tensors(meta.get_output_schema()) if meta is not None else []
    except Exception:  # a signature this code cannot read: no tensors rather than no answer
        inputs, outputs = [], []
    return {"name": name, "versions": [version] if version else [], "platform": "mlflow",
            "inputs": inputs, "outputs": outputs}
