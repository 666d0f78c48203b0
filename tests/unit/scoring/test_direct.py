"""The precomputed-schema shortcut gives exactly MLflow's answers, and is refused where it cannot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from supervisor.scoring.direct import DirectPredict, same_output
from supervisor.scoring.server import ClientError, Scorer

COLS = ["a", "b", "c"]


def data(n: int = 200, seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(np.random.default_rng(seed).normal(size=(n, 3)), columns=COLS)


def estimators() -> dict[str, Any]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "logistic": LogisticRegression(),
        "forest": RandomForestClassifier(n_estimators=10, random_state=0),
        "boosting": GradientBoostingRegressor(n_estimators=20, random_state=0),
        "pipeline": make_pipeline(StandardScaler(), LogisticRegression()),
        "by-name": make_pipeline(ColumnTransformer([("s", StandardScaler(), ["c", "a"])]), LogisticRegression()),
    }


def save(tmp_path: Path, name: str, estimator: Any, frame: pd.DataFrame) -> Path:
    import mlflow.sklearn

    y = (frame["a"] + frame["b"] > 0).astype(int)
    estimator.fit(frame, y if name != "boosting" else frame["a"] * 2 + frame["c"])
    path = tmp_path / name
    mlflow.sklearn.save_model(estimator, str(path), input_example=frame.head(2), serialization_format="cloudpickle")
    return path


@pytest.mark.parametrize("name", list(estimators()))
def test_shortcut_answers_exactly_like_mlflow(tmp_path: Path, name: str) -> None:
    frame = data()
    path = save(tmp_path, name, estimators()[name], frame)
    fast = Scorer(str(path), batching="off")
    slow = Scorer(str(path), batching="off", direct=False)
    assert fast.direct is not None and slow.direct is None
    if name == "by-name":
        assert fast.direct.estimator is None  # selects columns by name: the array route is refused
    else:
        assert fast.direct.estimator is not None
    for n, seed in ((1, 1), (3, 2), (500, 3)):
        probe = data(n, seed)
        assert same_output(fast.predict(probe, None), slow.predict(probe, None))
        shuffled = probe[["c", "a", "b"]]
        assert same_output(fast.predict(shuffled, None), slow.model.predict(probe))
    # Integers for double columns: not what enforcement would leave alone, so MLflow's path runs
    # (and refuses them, both ways alike).
    ints = pd.DataFrame({"a": [1, 2], "b": [0, -1], "c": [3, 3]})
    assert not fast.direct.accepts(ints)
    errors = []
    for scorer in (fast, slow):
        with pytest.raises(ClientError) as info:
            scorer.predict(ints, None)
        errors.append((info.value.status, info.value.message))
    assert errors[0] == errors[1]
    mixed = ints.assign(a=[1.5, 2.0])[["c", "b", "a"]].astype(float)
    assert same_output(fast.predict(mixed, None), slow.predict(mixed, None))


def test_shortcut_is_refused_without_a_column_signature_or_for_other_flavors(tmp_path: Path) -> None:
    import mlflow.pyfunc
    import mlflow.sklearn
    from sklearn.linear_model import LinearRegression

    frame = data()
    plain = tmp_path / "plain"
    mlflow.sklearn.save_model(LinearRegression().fit(frame, frame["a"]), str(plain),
                              serialization_format="cloudpickle")
    assert DirectPredict.build(mlflow.pyfunc.load_model(str(plain))) is None

    class Identity(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
            return model_input

    custom = tmp_path / "custom"
    mlflow.pyfunc.save_model(str(custom), python_model=Identity(), input_example=frame.head(2))
    assert DirectPredict.build(mlflow.pyfunc.load_model(str(custom))) is None


def test_same_output_is_strict() -> None:
    assert same_output(np.array([1, 2]), np.array([1, 2]))
    assert not same_output(np.array([1, 2]), np.array([1.0, 2.0]))
    assert not same_output(np.array([1, 2]), [1, 2])
    assert same_output(np.array([np.nan]), np.array([np.nan]))
    assert not same_output(pd.Series([1]), pd.Series([2]))
