"""Scoring throughput: our scoring server, the same behind the gateway, and ``mlflow models serve``.

    python -m tests.benchmarks.scoring [--seconds 8] [--concurrency 1,8,32] [--scoring-workers 1]

One run, one machine, one model (scikit-learn LogisticRegression on iris), one load generator
(wrk from Debian's packages) and the same request bodies for every server, so the figures are
comparable as ratios. Every server runs in the same uv environment, built from the model's own
requirements as the reconciler would build it. MLflow's server is tried with 1 and 2 uvicorn
workers and the better setting is the baseline. Traffic goes to 127.0.0.1 only; every run is
bounded by --seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from supervisor.envs import EnvBuilder, read_env_spec
from supervisor.gateway import Gateway
from supervisor.routing import ModelRoutes, VersionRoute
from supervisor.runtime.process import SCORING_SERVER
from supervisor.settings import Settings
from tests.support import free_port

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}", "rb"):read("*a")
"""


@dataclass
class Result:
    target: str
    rows: int
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rows_per_s(self) -> float:
        return self.rps * self.rows


def wait_ping(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"no answer from {url}")


def make_model(work: Path) -> Path:
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x = load_iris(as_frame=True).data
    x.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    model = LogisticRegression(max_iter=500).fit(x, load_iris().target)
    path = work / "model"
    mlflow.sklearn.save_model(model, str(path), input_example=x.head(3))
    return path


def bodies(work: Path) -> dict[int, Path]:
    row = [5.1, 3.5, 1.4, 0.2]
    cols = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    out = {}
    for n in (1, 1000):
        path = work / f"body-{n}.json"
        path.write_text(json.dumps({"dataframe_split": {"columns": cols, "data": [row] * n}}))
        out[n] = path
    return out


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, body: Path, concurrency: int, seconds: int, work: Path,
            script: Path | None = None) -> tuple[float, float, float, int]:
    if script is None:
        script = work / f"{body.stem}.lua"
        script.write_text(LUA.format(body=body))
    out = subprocess.run(["wrk", "-t", str(min(concurrency, 2)), "-c", str(concurrency), "-d", f"{seconds}s",
                          "--latency", "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                                            out)[0]) if "Socket errors" in out else 0
    return rps, p50, p99, errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--scoring-workers", type=int, default=1, help="processes of our scoring server")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="modelserve-bench-"))
    settings = Settings(data_dir=work / "data", port=free_port(), api_port=free_port(), mlflow_port=free_port())
    model = make_model(work)
    spec = read_env_spec(model)
    t0 = time.monotonic()
    python = EnvBuilder(settings).build(spec, work / "build.log")
    print(f"environment {spec.hash}: {time.monotonic() - t0:.1f} s (python {spec.python})", flush=True)
    env_bin = str(python.parent)
    procs: list[subprocess.Popen[bytes]] = []
    gateway = Gateway(settings)
    try:
        ours = free_port()
        procs.append(subprocess.Popen([str(python), str(SCORING_SERVER), "--model-dir", str(model), "--port",
                                       str(ours), "--workers", str(args.scoring_workers)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_ping(f"http://127.0.0.1:{ours}/ping")
        gateway.start()
        gateway.apply_routes([ModelRoutes("iris", (VersionRoute("1", "ready", ("127.0.0.1", ours)),))])
        targets = {"ours (direct)": f"http://127.0.0.1:{ours}/invocations",
                   "ours (gateway)": f"{settings.gateway_url}/model/iris/1/invocations"}
        mlflow_urls = {}
        for workers in (1, 2):
            port = free_port()
            env = dict(os.environ, PATH=f"{env_bin}:{os.environ['PATH']}")
            procs.append(subprocess.Popen([str(python), "-m", "mlflow", "models", "serve", "-m", str(model),
                                           "--env-manager", "local", "-p", str(port), "-w", str(workers)],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_ping(f"http://127.0.0.1:{port}/ping")
            mlflow_urls[workers] = f"http://127.0.0.1:{port}/invocations"
        results: list[Result] = []
        body_files = bodies(work)
        for rows, body in body_files.items():
            for c in levels:
                best = None
                for workers, url in mlflow_urls.items():
                    r = Result(f"mlflow models serve -w {workers}", rows, c, *run_wrk(url, body, c, args.seconds, work))
                    results.append(r)
                    best = r if best is None or r.rps > best.rps else best
                for name, url in targets.items():
                    r = Result(name, rows, c, *run_wrk(url, body, c, args.seconds, work))
                    results.append(r)
                    ratio = r.rps / best.rps if best and best.rps else float("nan")
                    print(f"rows={rows:<5} c={c:<3} {name:<16} {r.rps:9.1f} req/s {r.rows_per_s:11.1f} rows/s "
                          f"p50 {r.p50_ms:7.2f} ms p99 {r.p99_ms:7.2f} ms errors {r.errors}  "
                          f"x{ratio:.2f} vs best MLflow ({best.target if best else '-'}: {best.rps if best else 0:.1f} "
                          f"req/s, p99 {best.p99_ms if best else 0:.2f} ms)", flush=True)
        print(json.dumps([r.__dict__ for r in results]), file=sys.stderr)
    finally:
        gateway.stop()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
