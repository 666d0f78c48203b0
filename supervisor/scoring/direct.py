"""Skip MLflow's per-request schema enforcement when it could not change anything.

``PyFuncModel.predict`` re-reads the signature and walks every column of every request through
``_enforce_schema`` (about half a millisecond for a one-row request, more than the model itself).
For a DataFrame that already has exactly the signature's columns, in its order, with exactly the
numpy dtypes enforcement would produce, that work returns the frame unchanged; the flavor's own
wrapper (``model._model_impl.predict``) then gets the same input it would have got anyway.

So the decision is made once, at load: only flavors whose wrapper is a plain ``predict`` over
the frame (scikit-learn, XGBoost, LightGBM), only a column signature of plain numeric/boolean
types, all required. Then the two paths are run side by side on probe frames and the shortcut
is kept only if the answers are identical; any doubt at load or per request falls back to
MLflow's full path. Imports nothing from the supervisor (runs in the model's environment).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

if __package__:
    from .frames import column_dtypes, column_index
else:  # pragma: no cover - exercised by the real server processes
    from frames import column_dtypes, column_index  # type: ignore[import-not-found,no-redef]

# Flavors whose pyfunc wrapper passes the enforced frame straight to the library's predict.
DIRECT_FLAVORS = ("mlflow.sklearn", "mlflow.xgboost", "mlflow.lightgbm")
# Signature types whose enforcement is the identity on a column that already has this dtype.
_DTYPES = {"double": np.float64, "float": np.float32, "long": np.int64, "integer": np.int32, "boolean": np.bool_}


def loader_module(model: Any) -> str:
    try:
        return str(model.metadata.flavors.get("python_function", {}).get("loader_module") or "")
    except Exception:
        return ""


def same_output(a: Any, b: Any) -> bool:
    """Identical predictions: same type, same shape, same values (NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, pd.DataFrame):
        return bool(a.equals(b)) and list(a.columns) == list(b.columns)
    if isinstance(a, pd.Series):
        return bool(a.equals(b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    return bool(a == b)


class DirectPredict:
    """The flavor's own predict for frames MLflow's enforcement would leave untouched."""

    def __init__(self, impl: Any, columns: list[str], dtypes: list[np.dtype[Any]]) -> None:
        self.impl = impl
        self.columns = columns
        self.dtypes = dtypes
        self.estimator: Any = None  # set when the array route is proven the same (see _array_route)
        self.index = column_index(columns)  # the Index parsed frames with these columns share

    @classmethod
    def build(cls, model: Any) -> DirectPredict | None:
        """The shortcut for this model, or None when it is not provably the same as MLflow's path."""
        if loader_module(model) not in DIRECT_FLAVORS:
            return None
        try:
            meta = model.metadata
            if meta.get_params_schema() is not None:
                return None
            schema = meta.get_input_schema()
            if schema is None or not schema.has_input_names() or schema.is_tensor_spec():
                return None
            columns, dtypes = [], []
            for spec in schema.inputs:
                name = getattr(getattr(spec, "type", None), "name", None)
                if name not in _DTYPES or not getattr(spec, "required", True) or not isinstance(spec.name, str):
                    return None
                columns.append(spec.name)
                dtypes.append(np.dtype(_DTYPES[name]))
            impl = model._model_impl
            if not callable(getattr(impl, "predict", None)):
                return None
            direct = cls(impl, columns, dtypes)
            for probe in direct.probes():
                if not same_output(model.predict(probe), direct.predict(probe)):
                    return None
            direct._array_route(model)
            return direct
        except Exception:
            return None

    def _array_route(self, model: Any) -> None:
        """scikit-learn spends most of a small request checking a DataFrame's names and dtypes
        (hundreds of microseconds). When the estimator was fitted on exactly these column names
        and every column has one numeric dtype, the frame's values are what that check hands on,
        so the estimator gets the array directly; kept only if the probes agree."""
        estimator = getattr(self.impl, "sklearn_model", None)
        names = getattr(estimator, "feature_names_in_", None)
        if estimator is None or names is None or list(names) != self.columns:
            return
        if len(set(self.dtypes)) != 1 or self.dtypes[0].kind not in "fi":
            return
        # The estimator warns that an array has no feature names; the names were checked here.
        warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)
        self.estimator = estimator
        try:
            same = all(same_output(model.predict(p), self.predict(p)) for p in self.probes())
        except Exception:
            same = False
        if not same:
            self.estimator = None

    def probes(self) -> list[pd.DataFrame]:
        rows = 7
        base = np.linspace(-1.5, 2.5, rows)
        cols = {}
        for i, (name, dtype) in enumerate(zip(self.columns, self.dtypes, strict=True)):
            values = np.roll(base, i)
            cols[name] = (values > 0.3) if dtype == np.bool_ else values.astype(dtype)
        frame = pd.DataFrame(cols)
        return [frame, frame.iloc[:1].reset_index(drop=True)]

    def accepts(self, frame: Any) -> bool:
        if not isinstance(frame, pd.DataFrame) or len(frame.columns) != len(self.columns):
            return False
        if frame.columns is not self.index and list(frame.columns) != self.columns:
            return False
        return all(d == e for d, e in zip(column_dtypes(frame), self.dtypes, strict=True))

    def predict(self, frame: pd.DataFrame) -> Any:
        if self.estimator is not None:
            return self.estimator.predict(frame.to_numpy())
        return self.impl.predict(frame)
