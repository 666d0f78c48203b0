"""Load Example: the seed's records format for DataFrames, the serving file otherwise, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supervisor.api.examples import SEED_CONTENT_TYPE, ExampleUnavailable, example_files, load_example


def model_dir(tmp_path: Path, info: dict[str, str] | None, files: dict[str, object]) -> Path:
    lines = ["flavors: {}"]
    if info is not None:
        lines.append("saved_input_example_info:")
        lines += [f"  {k}: {v}" for k, v in info.items()]
    (tmp_path / "MLmodel").write_text("\n".join(lines) + "\n")
    for name, content in files.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return tmp_path


DF_INFO = {"artifact_path": "input_example.json", "pandas_orient": "split",
           "serving_input_path": "serving_input_example.json", "type": "dataframe"}


def test_dataframe_example_becomes_pandas_records(tmp_path: Path) -> None:
    d = model_dir(tmp_path, DF_INFO, {
        "input_example.json": {"columns": ["a", "b"], "data": [[1, 2.5], [3, 4.0]]},
        "serving_input_example.json": {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2.5], [3, 4.0]]}}})
    ex = load_example(d)
    assert ex.content_type == SEED_CONTENT_TYPE and ex.source == "input_example.json"
    assert json.loads(ex.body) == [{"a": 1, "b": 2.5}, {"a": 3, "b": 4.0}]


def test_other_examples_use_the_serving_file(tmp_path: Path) -> None:
    info = {"artifact_path": "input_example.json", "serving_input_path": "serving_input_example.json",
            "type": "ndarray"}
    d = model_dir(tmp_path, info, {"input_example.json": {"inputs": [[1, 2]]},
                                   "serving_input_example.json": {"inputs": [[1, 2]]}})
    ex = load_example(d)
    assert ex.content_type == "application/json" and json.loads(ex.body) == {"inputs": [[1, 2]]}


def test_old_models_without_a_serving_file(tmp_path: Path) -> None:
    d = model_dir(tmp_path, {"artifact_path": "input_example.json", "type": "ndarray"},
                  {"input_example.json": {"inputs": [1, 2]}})
    assert json.loads(load_example(d).body) == {"inputs": [1, 2]}


def test_no_example_too_large_and_broken(tmp_path: Path) -> None:
    none = tmp_path / "a"
    none.mkdir()
    with pytest.raises(ExampleUnavailable, match="not logged with an input example"):
        load_example(model_dir(none, None, {}))
    big = tmp_path / "b"
    big.mkdir()
    model_dir(big, DF_INFO, {"input_example.json": "[" + "1," * (3 << 20) + "1]"})
    with pytest.raises(ExampleUnavailable, match="smaller than 5 MB"):
        load_example(big)
    bad = tmp_path / "c"
    bad.mkdir()
    model_dir(bad, DF_INFO, {"input_example.json": "{not json"})
    with pytest.raises(ExampleUnavailable, match="not valid JSON"):
        load_example(bad)
    with pytest.raises(ExampleUnavailable, match="cannot be read"):
        load_example(tmp_path / "nowhere")


def test_example_names_cannot_leave_the_model_dir(tmp_path: Path) -> None:
    inner = tmp_path / "model"
    inner.mkdir()
    (tmp_path / "secret.json").write_text(json.dumps({"columns": ["s"], "data": [["top secret"]]}))
    d = model_dir(inner, {"artifact_path": "../secret.json", "type": "dataframe"}, {})
    assert example_files(d) == ["input_example.json", "serving_input_example.json"]
    with pytest.raises(ExampleUnavailable, match="not logged with an input example"):
        load_example(d)
