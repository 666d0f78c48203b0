"""modelserve against every peer a team would consider, in one run: MLServer, BentoML, Ray Serve, MLflow.

    python -m tests.benchmarks.peers [--seconds 10] [--peers mlserver,mlserver-v2,bentoml,ray,mlflow]
        [--cache ~/.cache/modelserve-peers]

The same iris LogisticRegression files (saved here, as ``tests.benchmarks.scoring`` saves them), the
same bodies (one row and 1,000 rows, ``dataframe_split``; for the V2 endpoints the same rows as
MLServer's ``pd`` content type, one tensor per column), the same wrk settings (``scoring.measure``:
a one-second warm-up, then ``--seconds``), at three points: 1 row at c=1 and c=16, 1,000 rows at c=16.
Each peer is installed as a new user would, in its own virtualenv under ``--cache`` (built once
with uv, kept between runs), and run at its best documented settings for this load: as many
worker processes or replicas as cores; MLServer (with ``mlserver-mlflow``) once on MLflow's
``/invocations`` and once on its V2 endpoint with adaptive batching (32 requests / 5 ms; batching
applies only there), pinned to ``uvloop<0.22`` (its parallel workers crash with 0.22 or later);
``mlflow models serve`` with 1 and with 2 workers, the better at each point. Peers run one after
another, each stopped before the next starts, so none takes CPU from another's measurement (Ray's
daemons do even when idle). modelserve is measured through its gateway as shipped: authentication
on, a non-admin user's Bearer token on every request (``authstack``), the scoring server on a Unix
socket; on ``/model/.../invocations`` and on the V2 path. The ceiling is Nginx proxying to a trivial
upstream (an Nginx ``return``) on this machine: what any server behind a proxy here can reach.
Printed: one table, each server's req/s and p99 at each point, modelserve's gateway as a multiple
of it, and its share of the ceiling; then, per point, the best peer against the bars of issue 16.
Traffic goes to 127.0.0.1 only; every run is bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.envs import EnvBuilder, read_env_spec
from supervisor.gateway import Gateway
from supervisor.routing import ModelRoutes, VersionRoute
from supervisor.runtime.process import SCORING_SERVER
from tests.benchmarks import authstack, wrk
from tests.benchmarks.procs import spawn, stop, wait_ping, wait_socket
from tests.benchmarks.scoring import IRIS_COLS, iris_model, measure, post, save, write_bodies
from tests.support import free_port

POINTS = ((1, 1), (1, 16), (1000, 16))  # (rows, connections)
CORES = len(os.sched_getaffinity(0))
# Each peer's virtualenv: what a new user installs. scikit-learn and MLflow as the model was saved
# with, so every peer unpickles the same files.
SKLEARN = "scikit-learn==1.9.1"
VENVS = {
    "mlserver": ["mlserver==1.7.1", "mlserver-mlflow==1.7.1", "uvloop<0.22", SKLEARN],
    "bentoml": ["bentoml==1.4.40", "mlflow-skinny==3.17.2", SKLEARN, "pandas"],
    "ray": ["ray[serve]==2.60.0", "mlflow-skinny==3.17.2", SKLEARN, "pandas"],
}
OURS, OURS_V2, CEILING = "modelserve gateway", "modelserve gateway V2", "nginx ceiling"


@dataclass
class Target:
    name: str
    url: str
    v2: bool = False  # takes the V2 bodies
    headers: tuple[tuple[str, str], ...] = ()


def venv(cache: Path, name: str) -> Path:
    """The peer's virtualenv (its python), built with uv on first use; rebuilt when its list changes."""
    reqs = VENVS[name]
    path = cache / name
    stamp = path / ".modelserve-peers"
    want = hashlib.sha256("\n".join(reqs).encode()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == want):
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        t0 = time.monotonic()
        subprocess.run([uv, "venv", "-q", "--clear", "--python", f"{sys.version_info[0]}.{sys.version_info[1]}",
                        str(path)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(path / "bin" / "python"), *reqs], check=True)
        stamp.write_text(want)
        print(f"{name}: virtualenv built in {time.monotonic() - t0:.0f} s: {' '.join(reqs)}", flush=True)
    return path / "bin" / "python"


def v2_bodies(work: Path, bodies: dict[int, Path]) -> dict[int, Path]:
    """The same rows as the ``dataframe_split`` bodies, as MLServer's ``pd`` content type."""
    out = {}
    for n, path in bodies.items():
        split = json.loads(path.read_text())["dataframe_split"]
        inputs = [{"name": c, "shape": [n], "datatype": "FP64", "data": [row[i] for row in split["data"]]}
                  for i, c in enumerate(split["columns"])]
        out[n] = work / f"body-v2-{n}.json"
        out[n].write_text(json.dumps({"parameters": {"content_type": "pd"}, "inputs": inputs}))
    return out


def predictions(answer: bytes) -> Any:
    obj = json.loads(answer)
    if isinstance(obj, dict) and "outputs" in obj:
        return obj["outputs"][0]["data"]
    return obj.get("predictions") if isinstance(obj, dict) else obj


def wait_post(url: str, body: bytes, timeout: float = 300, headers: tuple[tuple[str, str], ...] = (),
              proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until the URL answers 200 (a model loading, a first access decision: MLflow asked); a
    server process that ended meanwhile ends the wait at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server of {url} exited with code {proc.returncode}")
        with contextlib.suppress(OSError):
            if post(url, body, list(headers), timeout=30)[0] == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"no answer from {url}")


# --- the peers: each a context manager yielding its targets while it runs ----------------------
@contextlib.contextmanager
def mlserver(python: Path, model: Path, work: Path, batching: bool) -> Iterator[list[Target]]:
    home = work / ("mlserver-v2" if batching else "mlserver")
    (home / "iris").mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "settings.json").write_text(json.dumps({
        "parallel_workers": CORES, "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "host": "127.0.0.1", "debug": False}))
    settings: dict[str, Any] = {"name": "iris", "implementation": "mlserver_mlflow.MLflowRuntime",
                                "parameters": {"uri": str(model)}}
    if batching:
        settings.update(max_batch_size=32, max_batch_time=0.005)
    (home / "iris" / "model-settings.json").write_text(json.dumps(settings))
    proc = spawn([str(python.parent / "mlserver"), "start", str(home)], dict(os.environ), work / "mlserver.log")
    try:
        wait_ping(f"http://127.0.0.1:{port}/v2/models/iris/ready", 300)
        if batching:
            yield [Target("MLServer V2 batched", f"http://127.0.0.1:{port}/v2/models/iris/infer", v2=True)]
        else:
            yield [Target("MLServer /invocations", f"http://127.0.0.1:{port}/invocations")]
    finally:
        stop([proc])


BENTO_SERVICE = '''
import os

import bentoml
import mlflow.pyfunc
import pandas as pd


@bentoml.service(workers={workers})
class Iris:
    def __init__(self) -> None:
        self.model = mlflow.pyfunc.load_model(os.environ["PEER_MODEL_DIR"])

    @bentoml.api(route="/invocations")
    def invocations(self, dataframe_split: dict) -> dict:
        frame = pd.DataFrame(dataframe_split["data"], columns=dataframe_split["columns"])
        return {{"predictions": self.model.predict(frame).tolist()}}
'''


@contextlib.contextmanager
def bentoml(python: Path, model: Path, work: Path, body: bytes) -> Iterator[list[Target]]:
    home = work / "bento"
    home.mkdir(exist_ok=True)
    (home / "service.py").write_text(BENTO_SERVICE.format(workers=CORES))
    port = free_port()
    env = dict(os.environ, PEER_MODEL_DIR=str(model), BENTOML_HOME=str(home / "home"), BENTOML_DO_NOT_TRACK="True")
    proc = subprocess.Popen([str(python.parent / "bentoml"), "serve", "service:Iris", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=home, env=env, stdout=(work / "bento.log").open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/invocations"
        wait_post(url, body, proc=proc)
        yield [Target("BentoML", url)]
    finally:
        stop([proc])


RAY_APP = '''
import signal
import sys
import time

import mlflow.pyfunc
import pandas as pd
import ray
from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas={replicas}, ray_actor_options={{"num_cpus": 1}})
class Iris:
    def __init__(self, path: str) -> None:
        self.model = mlflow.pyfunc.load_model(path)

    async def __call__(self, request: Request) -> dict:
        split = (await request.json())["dataframe_split"]
        frame = pd.DataFrame(split["data"], columns=split["columns"])
        return {{"predictions": self.model.predict(frame).tolist()}}


def _stop(*_):
    serve.shutdown()
    ray.shutdown()
    sys.exit(0)


signal.signal(signal.SIGTERM, _stop)
ray.init(num_cpus={replicas}, include_dashboard=False, _temp_dir="{temp}")
serve.start(http_options={{"host": "127.0.0.1", "port": {port}}})
serve.run(Iris.bind("{model}"), route_prefix="/invocations")
while True:
    time.sleep(3600)
'''


@contextlib.contextmanager
def ray_serve(python: Path, model: Path, work: Path, body: bytes) -> Iterator[list[Target]]:
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
    script = work / "ray_app.py"
    script.write_text(RAY_APP.format(replicas=CORES, port=port, model=model, temp=temp))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = spawn([str(python), str(script)], env, work / "ray.log")
    try:
        url = f"http://127.0.0.1:{port}/invocations"
        wait_post(url, body, timeout=600, proc=proc)
        yield [Target(f"Ray Serve ({CORES} replicas)", url)]
    finally:
        stop([proc])
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def mlflow_serve(python: Path, model: Path, work: Path) -> Iterator[list[Target]]:
    env = dict(os.environ, PATH=f"{python.parent}:{os.environ['PATH']}")
    procs, targets = [], []
    try:
        for workers in (1, 2):
            port = free_port()
            procs.append(spawn([str(python), "-m", "mlflow", "models", "serve", "-m", str(model), "--env-manager",
                                "local", "-p", str(port), "-w", str(workers)], env, work / "mlflow-serve.log"))
            wait_ping(f"http://127.0.0.1:{port}/ping")
            targets.append(Target(f"mlflow models serve -w {workers}", f"http://127.0.0.1:{port}/invocations"))
        yield targets
    finally:
        stop(procs)


CEILING_CONF = '''
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_body_buffer_size 1m;
    upstream trivial {{ server 127.0.0.1:{upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://trivial;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{upstream};
        location / {{
            default_type application/json;
            return 200 '{{"predictions": [0]}}';
        }}
    }}
}}
'''


@contextlib.contextmanager
def ceiling(work: Path) -> Iterator[list[Target]]:
    prefix = work / "ceiling"
    prefix.mkdir(exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(CEILING_CONF.format(workers=CORES, prefix=prefix, port=port, upstream=free_port()))
    proc = spawn(["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"], dict(os.environ),
                 work / "ceiling.log")
    try:
        wait_ping(f"http://127.0.0.1:{port}/")
        yield [Target(CEILING, f"http://127.0.0.1:{port}/invocations")]
    finally:
        stop([proc])


@contextlib.contextmanager
def ours(python: Path, model: Path, work: Path, body: bytes) -> Iterator[list[Target]]:
    settings = authstack.auth_settings(work)
    with contextlib.ExitStack() as running:
        stack = running.enter_context(authstack.running(settings, work))
        gateway = Gateway(settings)
        gateway.start()
        running.callback(gateway.stop)
        sock = work / "sock"
        sock.mkdir(mode=0o700, exist_ok=True)
        address = f"unix:{sock / 'iris.sock'}"
        proc = spawn([str(python), str(SCORING_SERVER), "--model-dir", str(model), "--workers", "auto",
                      "--socket", address.removeprefix("unix:"), "--handoff-dir", str(work / "iris.handoff")],
                     dict(os.environ), work / "ours.log")
        running.callback(stop, [proc])
        wait_socket(address)
        gateway.apply_routes([ModelRoutes("iris", (VersionRoute("1", "ready", address),))])
        token = (("Authorization", stack.bearer),)
        wait_post(f"{settings.gateway_url}/model/iris/1/invocations", body, headers=token)
        yield [Target(OURS, f"{settings.gateway_url}/model/iris/1/invocations", headers=token),
               Target(OURS_V2, f"{settings.gateway_url}/v2/models/iris/versions/1/infer", v2=True, headers=token)]


def table(results: dict[str, dict[tuple[int, int], wrk.Result]]) -> str:
    head = "| server | " + " | ".join(f"{r:,} row{'s' if r > 1 else ''}, c={c}" for r, c in POINTS) + " |"
    lines = [head, "|---" * (len(POINTS) + 1) + "|"]
    for name, points in results.items():
        cells = []
        for point in POINTS:
            r, best = points.get(point), results.get(OURS, {}).get(point)
            ceil = results.get(CEILING, {}).get(point)
            if r is None:
                cells.append("-")
                continue
            cell = f"{r.rps:,.0f} req/s, p99 {r.p99_ms:.1f} ms"
            if r.errors:
                cell += f", {r.errors} errors"
            if name not in (OURS, CEILING) and best and r.rps:
                cell += f"; ours x{best.rps / r.rps:.1f}"
            if name != CEILING and ceil and ceil.rps:
                cell += f"; {r.rps / ceil.rps:.0%} of ceiling"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(results: dict[str, dict[tuple[int, int], wrk.Result]]) -> list[str]:
    bars = {(1, 1): 3.0, (1, 16): 3.0, (1000, 16): 2.0}
    out = []
    for point in POINTS:
        o = results.get(OURS, {}).get(point)
        peers = {n: p[point] for n, p in results.items()
                 if n not in (OURS, OURS_V2, CEILING) and point in p}
        if o is None or not peers:
            continue
        best = max(peers, key=lambda n: peers[n].rps)
        worst_p99 = min(p.p99_ms for p in peers.values())
        ratio = o.rps / peers[best].rps if peers[best].rps else float("inf")
        out.append(f"{point[0]:,} rows c={point[1]}: ours {o.rps:,.0f} req/s p99 {o.p99_ms:.1f} ms; best peer {best} "
                   f"{peers[best].rps:,.0f} req/s -> x{ratio:.2f} (bar x{bars[point]:.0f}: "
                   f"{'met' if ratio >= bars[point] else 'NOT met'}); lowest peer p99 {worst_p99:.1f} ms "
                   f"({'ours no worse' if o.p99_ms <= worst_p99 else 'ours WORSE'})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--peers", default="mlserver,mlserver-v2,bentoml,ray,mlflow")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "modelserve-peers"))
    args = parser.parse_args()
    # Stopped by `timeout` or a kill, it must still stop the peers it started (each in a session of
    # its own, so nothing else reaches them): SIGTERM unwinds the stack through their `finally`
    # blocks as Ctrl-C does. A run killed this way had left two `mlflow models serve` behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    chosen = args.peers.split(",")
    pythons = {name: venv(cache, name) for name in VENVS if any(p.startswith(name) for p in chosen)}
    work = Path(tempfile.mkdtemp(prefix="modelserve-peers-"))
    x = iris_model()[1]
    model = save(iris_model()[0], x, work / "iris")
    assert list(x.columns) == IRIS_COLS
    bodies = write_bodies("iris", x, work)
    bodies_v2 = v2_bodies(work, bodies)
    spec = read_env_spec(model)
    ours_python = EnvBuilder(authstack.auth_settings(work)).build(spec, work / "build.log")
    one = bodies[1].read_bytes()
    runs: list[tuple[str, Callable[[], contextlib.AbstractContextManager[list[Target]]]]] = [
        ("ours", lambda: ours(ours_python, model, work, one)),
        ("ceiling", lambda: ceiling(work)),
        ("mlserver", lambda: mlserver(pythons["mlserver"], model, work, batching=False)),
        ("mlserver-v2", lambda: mlserver(pythons["mlserver"], model, work, batching=True)),
        ("bentoml", lambda: bentoml(pythons["bentoml"], model, work, one)),
        ("ray", lambda: ray_serve(pythons["ray"], model, work, one)),
        ("mlflow", lambda: mlflow_serve(ours_python, model, work)),
    ]
    versions = {n: subprocess.run([str(p), "-c", f"import importlib.metadata as m; print(m.version('{VENVS[n][0].split('=')[0].split('[')[0]}'))"],
                                  capture_output=True, text=True).stdout.strip() for n, p in pythons.items()}
    load = os.getloadavg()
    print(f"{CORES} cores, load average at start {load[0]:.2f}; wrk {args.seconds} s per point after a 1 s "
          f"warm-up; peers: {', '.join(f'{n} {v}' for n, v in versions.items())}; ours and mlflow in the "
          f"model's own environment ({spec.hash})", flush=True)
    results: dict[str, dict[tuple[int, int], wrk.Result]] = {}
    reference = None
    for key, start in runs:
        if key not in ("ours", "ceiling") and key not in chosen:
            continue
        t0 = time.monotonic()
        try:
            with start() as targets:
                print(f"{key}: up in {time.monotonic() - t0:.0f} s", flush=True)
                for t in targets:
                    body = bodies_v2 if t.v2 else bodies
                    if t.name != CEILING:
                        status, answer = post(t.url, body[1000].read_bytes(), list(t.headers))
                        got = predictions(answer) if status == 200 else f"HTTP {status}: {answer[:200]!r}"
                        reference = got if reference is None else reference
                        print(f"{t.name}: 1,000-row answer {'identical to ours' if got == reference else 'DIFFERENT'}",
                              flush=True)
                    for rows, c in POINTS:
                        r = measure(t.name, "iris", rows, t.url, body[rows], c, args, work, list(t.headers))
                        results.setdefault(t.name, {})[(rows, c)] = r
                        print(f"  {t.name:<28} rows={rows:<5} c={c:<3} {r.rps:9.1f} req/s p50 {r.p50_ms:8.2f} ms "
                              f"p99 {r.p99_ms:8.2f} ms errors {r.errors}", flush=True)
        except SystemExit as exc:  # one peer that does not start leaves the others' figures
            print(f"{key}: did not start: {exc}", flush=True)
    # mlflow: the better of 1 or 2 workers at each point.
    mlflow_runs = {n: p for n, p in results.items() if n.startswith("mlflow models serve")}
    if mlflow_runs:
        best = {pt: max((p[pt] for p in mlflow_runs.values() if pt in p), key=lambda r: r.rps) for pt in POINTS}
        for n in mlflow_runs:
            results.pop(n)
        results["mlflow models serve (best of -w 1, -w 2)"] = best
        print("mlflow models serve, workers of the better run: " + ", ".join(
            f"{pt[0]} rows c={pt[1]}: {r.target.rsplit(' ', 1)[-1]}" for pt, r in best.items()), flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}\n\n" + table(results) + "\n")
    print(textwrap.indent("\n".join(verdicts(results)), "  "), flush=True)
    print(json.dumps({n: {f"{k[0]}x{k[1]}": v.__dict__ for k, v in p.items()} for n, p in results.items()}),
          file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
