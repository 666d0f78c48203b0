"""The test box's "Load Example": the input example logged with a model version, ready to send.

Read from the version's model files (``saved_input_example_info`` in ``MLmodel``). A DataFrame
example becomes a list of records sent as ``application/json; format=pandas-records``, the
seed's own request format, as the Databricks Serving tab did for legacy endpoints; any other
example is sent as MLflow logged it for serving (``serving_input_example.json``), else as
``input_example.json``. Examples above 5 MB are refused, like the Databricks UI did, so a page
never tries to show a huge body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_EXAMPLE_BYTES = 5 << 20
SEED_CONTENT_TYPE = "application/json; format=pandas-records"
NO_EXAMPLE = ("This model version was not logged with an input example. Log one with the model "
              "(e.g. mlflow.sklearn.log_model(..., input_example=X.head(3))) to fill this box from it.")


class ExampleUnavailable(Exception):
    """Why there is no example to show; the message is meant for the page."""


@dataclass(frozen=True)
class Example:
    body: str
    content_type: str
    source: str  # the file it came from


def _plain(name: object, default: str) -> str:
    """An example file name from MLmodel (model content, so untrusted): a bare file name or the default."""
    if isinstance(name, str) and name and "/" not in name and "\\" not in name and name not in (".", ".."):
        return name
    return default


def example_files(model_dir: Path) -> list[str]:
    """The files ``load_example`` may read, relative to the model dir (for a partial download)."""
    info = _info(model_dir)
    return [_plain(info.get("artifact_path"), "input_example.json"),
            _plain(info.get("serving_input_path"), "serving_input_example.json")]


def _info(model_dir: Path) -> dict[str, Any]:
    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ExampleUnavailable(f"The model files of this version cannot be read: {exc}") from exc
    info = mlmodel.get("saved_input_example_info") if isinstance(mlmodel, dict) else None
    return info if isinstance(info, dict) else {}


def _read(path: Path) -> Any:
    if path.stat().st_size > MAX_EXAMPLE_BYTES:
        raise ExampleUnavailable("The example logged with this model is too large to be displayed. "
                                 "Examples must be smaller than 5 MB.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExampleUnavailable(f"The example file {path.name} is not valid JSON: {exc}") from exc


def _records(split: dict[str, Any]) -> list[Any]:
    rows = split.get("data", [])
    columns = split.get("columns")
    if not columns:
        return list(rows)
    return [dict(zip(columns, row, strict=False)) for row in rows]


def load_example(model_dir: Path) -> Example:
    info = _info(model_dir)
    artifact = model_dir / _plain(info.get("artifact_path"), "input_example.json")
    serving = model_dir / _plain(info.get("serving_input_path"), "serving_input_example.json")
    kind = info.get("type")
    if not artifact.is_file() and not serving.is_file():
        raise ExampleUnavailable(NO_EXAMPLE)
    if artifact.is_file() and kind in (None, "dataframe") and info.get("pandas_orient", "split") == "split":
        raw = _read(artifact)
        # With params the file is {"inputs": ..., "params": ...}: not a plain DataFrame, send the serving form.
        if isinstance(raw, dict) and "data" in raw and "params" not in raw:
            return Example(json.dumps(_records(raw), indent=2), SEED_CONTENT_TYPE, artifact.name)
    if serving.is_file():
        return Example(json.dumps(_read(serving), indent=2), "application/json", serving.name)
    if kind not in (None, "ndarray", "json_object", "dataframe"):
        raise ExampleUnavailable(f"Unsupported example type: {kind}")
    raw = _read(artifact)
    body = raw if isinstance(raw, dict) and "inputs" in raw else {"inputs": raw}
    return Example(json.dumps(body, indent=2), "application/json", artifact.name)
