"""The scoring server inside an MLflow 2.x environment (built with uv), with a model saved by 2.x."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from supervisor.scoring import server

SAVE = """
import mlflow, mlflow.sklearn
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
x = load_iris(as_frame=True).data
x.columns = ["a", "b", "c", "d"]
m = LogisticRegression(max_iter=500).fit(x, load_iris().target)
mlflow.sklearn.save_model(m, MODEL_DIR, input_example=x.head(2))
print(m.predict(x.head(3)).tolist())
"""


def uv() -> str:
    found = Path(sys.executable).parent / "uv"
    return str(found) if found.exists() else (shutil.which("uv") or "uv")


def test_serves_a_model_saved_with_mlflow_2(tmp_path: Path) -> None:
    env = tmp_path / "env"
    subprocess.run([uv(), "venv", "-q", "--python", f"{sys.version_info.major}.{sys.version_info.minor}", str(env)],
                   check=True, timeout=120)
    subprocess.run([uv(), "pip", "install", "-q", "--python", str(env / "bin" / "python"), "mlflow==2.22.0",
                    "scikit-learn<1.7", "pandas<2.3", "numpy<2.3"], check=True, timeout=600)
    py = str(env / "bin" / "python")
    model_dir = tmp_path / "model"
    out = subprocess.run([py, "-c", SAVE.replace("MODEL_DIR", repr(str(model_dir)))], capture_output=True,
                         text=True, check=True, timeout=300)
    expected = json.loads(out.stdout.strip().splitlines()[-1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([py, str(Path(server.__file__)), "--model-dir", str(model_dir), "--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180  # loading MLflow and the model: over a minute when loaded
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        assert requests.get(f"{url}/version", timeout=30).text == "2.22.0"
        rows = [[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2], [4.7, 3.2, 1.3, 0.2]]
        records = [dict(zip("abcd", r, strict=True)) for r in rows]
        r = requests.post(f"{url}/invocations", json=records,
                          headers={"Content-Type": "application/json; format=pandas-records"}, timeout=60)
        assert r.status_code == 200 and r.json() == expected
        r = requests.post(f"{url}/invocations", json={"dataframe_split": {"columns": list("abcd"), "data": rows}},
                          timeout=60)
        assert r.json() == {"predictions": expected}
        r = requests.post(f"{url}/invocations", json={"dataframe_records": [{"z": 1}]}, timeout=60)
        assert r.status_code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=20)

