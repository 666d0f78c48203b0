"""One real scoring server process with a real scikit-learn model, shared by the scoring tests.

Loading MLflow and the model takes seconds (tens of seconds on a busy machine), so the example
tests and the property tests share one process for the session. Its output goes to a file, not a
pipe nobody reads: a pipe fills up and would block the server mid-request.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from supervisor.scoring import server
from tests.support import free_port

COLS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SERVER = Path(server.__file__)


@pytest.fixture(scope="session")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The capture spool of the shared server (written only for requests with the capture header)."""
    return tmp_path_factory.mktemp("capture") / "v.spool"


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory, spool: Path) -> Iterator[tuple[str, Any]]:
    """(base URL, the fitted classifier) of a running scoring server; checked alive at the end."""
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(60, 4)), columns=COLS)
    y = (x["sepal_length"] + x["petal_width"] > 0).astype(int)
    clf = LogisticRegression().fit(x, y)
    path = tmp_path_factory.mktemp("m") / "model"
    mlflow.sklearn.save_model(clf, str(path), input_example=x.head(2))
    port = free_port()
    log_path = path.parent / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(SERVER), "--model-dir", str(path), "--port", str(port),
                                 "--capture-spool", str(spool)],
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        yield url, clf
        assert proc.poll() is None, "the scoring server died:\n" + log_path.read_text(errors="replace")[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def v2_request(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    """MLServer's ``pd`` content type: one tensor per column."""
    return {"parameters": {"content_type": "pd"}, **extra, "inputs": [
        {"name": c, "shape": [len(rows)], "datatype": "FP64", "data": [r[i] for r in rows]}
        for i, c in enumerate(COLS)]}
