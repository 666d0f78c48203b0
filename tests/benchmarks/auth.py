"""Scoring throughput through the gateway with access control on against the same path with it off.

    python -m tests.benchmarks.auth [--seconds 5] [--concurrency 1,8,32]

One run, one scoring server (iris LogisticRegression, our scoring server in the model's own uv
environment), and three gateways in front of it: authentication off; on, with the default
``MODELSERVE_AUTH_CACHE_SECONDS=10`` (Nginx caches decisions 5 s); and on with Nginx's cache
off, so every request is checked by the supervisor (gunicorn, real ``Access``), which still
caches MLflow's answers in process. Behind the checks: a real ``mlflow server --app-name
basic-auth`` and a non-admin user with a token and a password. Traffic goes to 127.0.0.1 only;
every measurement is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from supervisor.envs import EnvBuilder, read_env_spec
from supervisor.gateway import Gateway
from supervisor.routing import ModelRoutes, VersionRoute
from supervisor.runtime.process import SCORING_SERVER
from tests.benchmarks import authstack, wrk
from tests.benchmarks.procs import spawn, stop, wait_ping
from tests.benchmarks.scoring import iris_model, save, write_bodies
from tests.support import free_port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="modelserve-bench-auth-"))
    base = authstack.auth_settings(work)  # the default 10 s decision cache
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, True)
        cleanup.callback(stop, procs)
        estimator, x = iris_model()
        model = save(estimator, x, work / "model")
        python = EnvBuilder(base).build(read_env_spec(model), work / "build.log")
        scoring = free_port()
        procs.append(spawn([str(python), str(SCORING_SERVER), "--model-dir", str(model), "--port", str(scoring)],
                           dict(os.environ), work / "scoring.log"))
        # A real MLflow auth app, and the supervisor's API asking it.
        stack = cleanup.enter_context(authstack.running(base, work))
        routes = [ModelRoutes("iris", (VersionRoute("1", "ready", f"127.0.0.1:{scoring}"),))]
        variants: dict[str, dict[str, Any]] = {"auth off": dict(auth=False), "auth on (default cache)": dict(auth_cache_seconds=10.0),
                    "auth on, no Nginx cache": dict(auth_cache_seconds=0.0)}
        urls = {}
        for i, (name, extra) in enumerate(variants.items()):
            s = base.model_copy(update={"data_dir": work / f"gw{i}", "port": free_port(), **extra})
            gw = Gateway(s)
            gw.start()
            cleanup.callback(gw.stop)
            gw.apply_routes(routes)
            urls[name] = f"{s.gateway_url}/model/iris/1/invocations"
        wait_ping(f"http://127.0.0.1:{scoring}/ping")
        creds = {"token": stack.bearer, "password": stack.basic}
        body = write_bodies("iris", x, work)[1]
        # Every variant must answer 200 with each credential before it is measured (this also
        # warms the caches), and 401 without one when authentication is on.
        for name, url in urls.items():
            for cred_name, header in creds.items():
                t0 = time.monotonic()
                ok = requests.post(url, data=body.read_bytes(), timeout=60,
                                   headers={"Content-Type": "application/json", "Authorization": header})
                assert ok.status_code == 200, (name, cred_name, ok.status_code, ok.text)
                print(f"first request {name} ({cred_name}): {1000 * (time.monotonic() - t0):.1f} ms", flush=True)
            anonymous = requests.post(url, data=body.read_bytes(), headers={"Content-Type": "application/json"},
                                      timeout=60)
            assert anonymous.status_code == (200 if name == "auth off" else 401), (name, anonymous.status_code)
        print(f"machine: {os.cpu_count()} cores; body: 1 row dataframe_split; {args.seconds} s per point", flush=True)
        results = []
        for c in levels:
            baseline = None
            for name, url in urls.items():
                for cred_name, header in (creds.items() if name != "auth off" else [("none", "")]):
                    headers = [("Authorization", header)] if header else []
                    rps, p50, p99, errors = wrk.run(url, body, c, args.seconds, work, headers)
                    baseline = baseline or rps
                    label = f"{name} ({cred_name})"
                    results.append({"target": label, "concurrency": c, "rps": rps, "p50_ms": p50, "p99_ms": p99,
                                    "errors": errors})
                    print(f"c={c:<3} {label:<40} {rps:9.1f} req/s p50 {p50:7.2f} ms p99 {p99:7.2f} ms "
                          f"errors {errors}  x{rps / baseline:.2f} vs auth off", flush=True)
        print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
