"""Micro-batching: answers identical with batching on and off, under concurrency, with requests of
different sizes, column orders and forms, and a bad request in a batch failing alone."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from supervisor.scoring.batching import Batcher, split_rows
from supervisor.scoring.server import ClientError, Scorer

COLS = ["a", "b", "c", "d"]


def run_together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Start every call at the same instant from its own thread; results (or exceptions) in order."""
    barrier = threading.Barrier(len(calls))
    out: list[Any] = [None] * len(calls)

    def one(i: int) -> None:
        barrier.wait()
        try:
            out[i] = calls[i]()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def test_split_rows_cuts_every_output_kind() -> None:
    sizes = [1, 3, 2]
    arr = np.arange(6)
    assert [p.tolist() for p in split_rows(arr, sizes)] == [[0], [1, 2, 3], [4, 5]]
    assert [p.tolist() for p in split_rows(pd.Series(arr), sizes)] == [[0], [1, 2, 3], [4, 5]]
    frame = pd.DataFrame({"x": arr, "y": arr * 2})
    assert [p["y"].tolist() for p in split_rows(frame, sizes)] == [[0], [2, 4, 6], [8, 10]]
    assert split_rows(list(range(6)), sizes) == [[0], [1, 2, 3], [4, 5]]
    with pytest.raises(ValueError):
        split_rows(np.arange(5), sizes)
    with pytest.raises(ValueError):
        split_rows({"x": arr}, sizes)
    with pytest.raises(ValueError):
        split_rows(np.float64(1.0), sizes)


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows() -> None:
    calls: list[int] = []

    def predict(frame: pd.DataFrame) -> np.ndarray:
        calls.append(len(frame))
        return (frame["a"] * 10 + frame["b"]).to_numpy()

    batcher = Batcher(predict, max_rows=1000, window=0.05)
    frames = [pd.DataFrame({"a": np.full(n, i, dtype=float), "b": np.arange(n, dtype=float)})
              for i, n in enumerate([1, 5, 2, 7, 1, 3, 1, 4] * 3)]
    for _ in frames:
        batcher.announce()
    results = run_together([lambda f=f: batcher.submit(f) for f in frames])
    for f, r in zip(frames, results, strict=True):
        assert r.tolist() == (f["a"] * 10 + f["b"]).tolist()
    assert batcher.batches >= 1 and len(calls) < len(frames)
    assert sum(calls) == sum(len(f) for f in frames)


def test_a_bad_request_in_a_batch_fails_alone() -> None:
    def predict(frame: pd.DataFrame) -> np.ndarray:
        if (frame["a"] < 0).any():
            raise ValueError("negative input")
        return frame["a"].to_numpy() * 2

    batcher = Batcher(predict, window=0.05)
    frames = [pd.DataFrame({"a": [float(i), i + 0.5]}) for i in range(9)]
    frames[4] = pd.DataFrame({"a": [1.0, -1.0]})
    for _ in frames:
        batcher.announce()
    results = run_together([lambda f=f: batcher.submit(f) for f in frames])
    for i, (f, r) in enumerate(zip(frames, results, strict=True)):
        if i == 4:
            assert isinstance(r, ValueError)
        else:
            assert r.tolist() == (f["a"] * 2).tolist()


def test_batches_respect_max_rows_and_only_merge_compatible_frames() -> None:
    seen: list[tuple[int, tuple[str, ...]]] = []

    def predict(frame: pd.DataFrame) -> np.ndarray:
        seen.append((len(frame), tuple(frame.columns)))
        return frame.iloc[:, 0].to_numpy()

    batcher = Batcher(predict, max_rows=6, window=0.05)
    frames = [pd.DataFrame({"a": [1.0] * 4, "b": [2.0] * 4}), pd.DataFrame({"b": [3.0] * 4, "a": [4.0] * 4}),
              pd.DataFrame({"a": [5.0] * 3, "b": [6.0] * 3}), pd.DataFrame({"a": [7, 7], "b": [8, 8]})]
    for _ in frames:
        batcher.announce()
    results = run_together([lambda f=f: batcher.submit(f) for f in frames])
    for f, r in zip(frames, results, strict=True):
        assert r.tolist() == f.iloc[:, 0].tolist()
    assert all(n <= 6 for n, _ in seen)


# --- the real scorer, batching on and off ------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import mlflow.sklearn
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.normal(size=(300, 4)), columns=COLS)
    y = ((x["a"] + x["b"] * x["c"]) > 0).astype(int) + (x["d"] > 1).astype(int)
    model = RandomForestClassifier(n_estimators=15, random_state=0).fit(x, y)
    path = tmp_path_factory.mktemp("batch") / "model"
    mlflow.sklearn.save_model(model, str(path), input_example=x.head(3), serialization_format="cloudpickle")
    return path


def request_mix() -> list[tuple[bytes, str]]:
    """Requests of many sizes, column orders and forms, all valid."""
    rng = np.random.default_rng(7)
    out = []
    for i, n in enumerate([1, 1, 3, 17, 1, 50, 2, 1, 8, 1, 120, 1, 4, 1, 1, 33]):
        frame = pd.DataFrame(rng.normal(size=(n, 4)).round(3), columns=COLS)
        order = [COLS, list(reversed(COLS)), ["c", "a", "d", "b"]][i % 3]
        frame = frame[order]
        if i % 4 == 0:
            out.append((json.dumps(frame.to_dict(orient="records")).encode(), "application/json; format=pandas-records"))
        elif i % 4 == 1:
            out.append((json.dumps({"dataframe_records": frame.to_dict(orient="records")}).encode(), "application/json"))
        else:
            out.append((json.dumps({"dataframe_split": frame.to_dict(orient="split")}).encode(), "application/json"))
    return out


def slowed(scorer: Scorer) -> Scorer:
    """Each predict takes 20 ms longer, so concurrent requests reliably meet in the queue."""
    assert scorer.batcher is not None
    predict = scorer.batcher.predict

    def slow(frame: pd.DataFrame) -> Any:
        time.sleep(0.02)
        return predict(frame)

    scorer.batcher.predict = slow
    return scorer


def test_answers_are_identical_with_batching_on_and_off(model_dir: Path) -> None:
    off = Scorer(str(model_dir), batching="off", direct=False)  # MLflow's own path, one request at a time
    on = slowed(Scorer(str(model_dir), batching="on", batch_window=0.05))
    assert on.batcher is not None and off.batcher is None
    mix = request_mix()
    expected = [off.score(body, ctype) for body, ctype in mix]
    for _ in range(3):
        got = run_together([lambda b=b, c=c: on.score(b, c) for b, c in mix])
        assert got == expected
    assert on.batcher.batches >= 1  # some requests really were predicted together


def test_bad_requests_fail_alone_among_concurrent_good_ones(model_dir: Path) -> None:
    on = slowed(Scorer(str(model_dir), batching="on", batch_window=0.05))
    off = Scorer(str(model_dir), batching="off", direct=False)
    mix = request_mix()
    # Same columns and dtypes as the good ones (so it joins their batch) but a value too large for
    # the forest's float32 input, which scikit-learn rejects.
    bad_nan = (json.dumps({"dataframe_split": {"columns": COLS, "data": [[0.1, 1e300, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]]}})
               .encode(), "application/json")
    bad_col = (json.dumps({"dataframe_records": [{"a": 1.0, "zzz": 2.0}]}).encode(), "application/json")
    bad_json = (b'{"dataframe_split": ', "application/json")
    calls = [*mix[:6], bad_nan, *mix[6:11], bad_col, bad_json, *mix[11:]]
    results = run_together([lambda b=b, c=c: on.score(b, c) for b, c in calls])
    for (body, ctype), got in zip(calls, results, strict=True):
        if (body, ctype) in (bad_nan, bad_col, bad_json):
            assert isinstance(got, ClientError) and got.status == 400
        else:
            assert got == off.score(body, ctype)
    assert on.batcher is not None and on.batcher.batches >= 1
    assert on.batcher._parsing == 0  # no announcement left dangling


def test_batching_defaults_follow_the_flavor(model_dir: Path, tmp_path: Path) -> None:
    import mlflow.pyfunc

    assert Scorer(str(model_dir)).batcher is not None  # scikit-learn: on by default

    class Doubler(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
            return model_input * 2

    path = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(str(path), python_model=Doubler())
    assert Scorer(str(path)).batcher is None  # a custom pyfunc may look across rows: off
    assert Scorer(str(path), batching="on").batcher is not None
    with pytest.raises(ValueError):
        Scorer(str(path), batching="sometimes")
