"""Scoring throughput and the serving figures of issue 6, against ``mlflow models serve``, in one run.

    python -m tests.benchmarks.scoring [--seconds 5] [--concurrency 1,8,32] [--models iris,forest]
        [--scoring-workers auto] [--batching auto] [--header 'Name: value'] [--no-auth] [--registration]

One machine, one load generator (wrk from Debian's packages) and the same request bodies for every
server, so the figures are comparable as ratios. Two models: LogisticRegression on iris (4
columns; the model costs nothing, so the server's own overhead is what is measured) and a
RandomForest of 100 trees on a synthetic 20-column dataset made here (the model costs something).
Every server runs in the same uv environment, built from the model's own requirements as the
reconciler would build it. ``mlflow models serve`` is run with 1 and 2 uvicorn workers and the
better of the two at each point is the baseline; ours runs direct and through Nginx. Through
Nginx, ours is measured twice in the same run, on the same gateway: "ours (gateway, Unix)" is
the path as shipped (the scoring server on ``--socket``, the upstream a ``unix:`` address, as a
model host runs it) and "ours (gateway, TCP)" the path before Unix sockets (a loopback TCP
upstream). wrk cannot speak to a Unix socket, so "ours (direct)" is a second instance of ours on
a loopback port, started the same way; it is also the TCP upstream. The gateway targets are the
full path as shipped: authentication on, a real ``mlflow server
--app-name basic-auth`` and the supervisor's API behind Nginx's ``auth_request``, and every
request carrying a non-admin user's ``Authorization: Bearer`` token (``authstack``; only the
gateway gets it, the servers without access control get nothing they would ignore anyway).
``--no-auth`` measures the gateway with authentication off instead; ``--header`` adds a header
to every request of every server.
Then: answers compared between servers, resident memory per served version (RSS and PSS of each
server's process tree), the gateway's added latency for either upstream (p50 full path minus
direct, so with authentication on it includes the access check), a 16 MB request through the
gateway's Unix upstream (with the token), and with ``--registration`` the time from registration to READY on a whole system (cold
and warm environment cache, authentication as for the gateway). Traffic goes to 127.0.0.1 only;
every load run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

from supervisor.envs import EnvBuilder, read_env_spec
from supervisor.gateway import Gateway
from supervisor.routing import ModelRoutes, VersionRoute
from supervisor.runtime.process import SCORING_SERVER
from supervisor.settings import Settings
from tests.benchmarks import authstack, procmem, procs, wrk
from tests.benchmarks.procs import wait_ping, wait_socket
from tests.support import free_port

# The gateway's routes to ours: version 1 of a model goes to the Unix socket, version 2 to the port.
GATEWAY_UNIX, GATEWAY_TCP = "ours (gateway, Unix)", "ours (gateway, TCP)"
GATEWAYS = (GATEWAY_UNIX, GATEWAY_TCP)
OURS = ("ours (direct)", *GATEWAYS)

IRIS_COLS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
FOREST_COLS = [f"f{i:02d}" for i in range(20)]


def iris_model(seed: int = 0) -> tuple[Any, pd.DataFrame]:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x = load_iris(as_frame=True).data
    x.columns = IRIS_COLS
    return LogisticRegression(max_iter=500 + seed).fit(x, load_iris().target), x


def forest_model() -> tuple[Any, pd.DataFrame]:
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    x, y = make_classification(n_samples=5000, n_features=20, n_informative=10, n_classes=3, random_state=0)
    frame = pd.DataFrame(x, columns=FOREST_COLS)
    return RandomForestClassifier(n_estimators=100, max_depth=12, random_state=0).fit(frame, y), frame


def save(model: Any, x: pd.DataFrame, path: Path) -> Path:
    import mlflow.sklearn

    # cloudpickle, not MLflow 3's default skops: skops refuses tree models unless told to trust them.
    mlflow.sklearn.save_model(model, str(path), input_example=x.head(3), serialization_format="cloudpickle")
    return path


def write_bodies(name: str, x: pd.DataFrame, work: Path) -> dict[int, Path]:
    out = {}
    for n in (1, 1000):
        rows = x.sample(n=n, replace=n > len(x), random_state=n).round(4)
        path = work / f"body-{name}-{n}.json"
        path.write_text(json.dumps({"dataframe_split": {"columns": list(x.columns), "data": rows.values.tolist()}}))
        out[n] = path
    return out


def post(url: str, body: bytes, headers: list[tuple[str, str]], timeout: float = 120) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **dict(headers)})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Servers:
    """Every server of one model, started in the model's environment; stopped by stop()."""

    def __init__(self, python: Path, model: Path, args: argparse.Namespace, sockets_dir: Path) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}
        env = dict(os.environ, PATH=f"{python.parent}:{os.environ['PATH']}")
        # Both instances of ours are started as the model host starts one (--handoff-dir: a
        # supervising parent, workers that outlive it), so their memory is what a served version
        # costs. The one on a Unix socket is the shipped upstream; the one on a port is what wrk
        # measures directly and the gateway's TCP upstream.
        ours = [str(python), str(SCORING_SERVER), "--model-dir", str(model), "--workers", args.scoring_workers,
                "--batching", args.batching]
        sockets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ours_address = f"unix:{sockets_dir / f'{model.name}.sock'}"
        self.procs["ours (Unix socket)"] = self._spawn(
            [*ours, "--socket", self.ours_address.removeprefix("unix:"),
             "--handoff-dir", str(model.parent / f"{model.name}.unix.handoff")], env)
        port = free_port()
        self.ours_port = port
        self._start("ours (direct)", port, [*ours, "--port", str(port),
                                            "--handoff-dir", str(model.parent / f"{model.name}.handoff")], env)
        wait_socket(self.ours_address)
        for workers in (1, 2):
            port = free_port()
            self._start(f"mlflow models serve -w {workers}", port,
                        [str(python), "-m", "mlflow", "models", "serve", "-m", str(model), "--env-manager", "local",
                         "-p", str(port), "-w", str(workers)], env)

    @staticmethod
    def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    def _start(self, name: str, port: int, argv: list[str], env: dict[str, str]) -> None:
        self.procs[name] = self._spawn(argv, env)
        self.urls[name] = f"http://127.0.0.1:{port}/invocations"
        wait_ping(f"http://127.0.0.1:{port}/ping")

    def mlflow(self) -> dict[str, str]:
        return {k: v for k, v in self.urls.items() if k.startswith("mlflow")}

    def stop(self) -> None:
        procs.stop(list(self.procs.values()))


def measure(target: str, model: str, rows: int, url: str, body: Path, c: int, args: argparse.Namespace,
            work: Path, headers: list[tuple[str, str]]) -> wrk.Result:
    """One wrk run after a one-second warm-up of the same shape, for every server alike: the
    first seconds of a fresh connection pool, a lazily built model and a first access decision
    are not what a served model runs at. wrk corrects its percentiles for coordinated omission
    (a stall of S ms at c connections adds samples as if requests had kept arriving), so one
    stall in a short run reaches p99: the warm-up keeps one-time costs out of it."""
    wrk.run(url, body, c, 1, work, headers)
    return wrk.Result(target, model, rows, c, *wrk.run(url, body, c, args.seconds, work, headers))


def line(r: wrk.Result, best: wrk.Result | None) -> str:
    ratio = r.rps / best.rps if best and best.rps else float("nan")
    base = f"{best.target}: {best.rps:.1f} req/s, p99 {best.p99_ms:.2f} ms" if best else "-"
    return (f"{r.model:<6} rows={r.rows:<5} c={r.concurrency:<3} {r.target:<22} {r.rps:9.1f} req/s "
            f"{r.rows_per_s:11.1f} rows/s p50 {r.p50_ms:8.2f} ms p99 {r.p99_ms:8.2f} ms errors {r.errors:<4} "
            + (f"x{ratio:.2f} vs best MLflow ({base})" if not r.target.startswith("mlflow") else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--models", default="iris,forest")
    parser.add_argument("--scoring-workers", default="auto", help="processes of our scoring server (or auto)")
    parser.add_argument("--batching", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--header", action="append", default=[], help="'Name: value' added to every request")
    parser.add_argument("--no-auth", action="store_true",
                        help="measure the gateway with authentication off (default: on, as shipped)")
    parser.add_argument("--registration", action="store_true", help="also time registration -> READY")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    headers = [wrk.parse_header(h) for h in args.header]
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="modelserve-bench-"))
    settings = (Settings(data_dir=work / "data", port=free_port(), api_port=free_port(), mlflow_port=free_port(),
                         auth=False) if args.no_auth else authstack.auth_settings(work))
    makers = {"iris": iris_model, "forest": forest_model}
    models = {name: save(*makers[name](), work / name) for name in args.models.split(",")}
    spec = read_env_spec(next(iter(models.values())))
    t0 = time.monotonic()
    python = EnvBuilder(settings).build(spec, work / "build.log")
    print(f"environment {spec.hash}: {time.monotonic() - t0:.1f} s (python {spec.python}); "
          f"{os.cpu_count()} cores; ours: --workers {args.scoring_workers} --batching {args.batching}; "
          f"gateway authentication: {'off' if args.no_auth else 'on (a non-admin user, Bearer token)'}; "
          f"extra headers: {', '.join(k for k, _ in headers) or 'none'}", flush=True)
    results: list[wrk.Result] = []
    with contextlib.ExitStack() as running:
        running.callback(lambda: print(json.dumps([r.__dict__ for r in results]), file=sys.stderr))
        # What the gateway asks before each request (MLflow basic-auth and our API), then the gateway.
        stack = None if args.no_auth else running.enter_context(authstack.running(settings, work))
        gateway = Gateway(settings)
        gateway.start()
        running.callback(gateway.stop)
        # Only the gateway checks access, so only requests to it carry the user's token (unless
        # --header already gives an Authorization header, which then goes everywhere as given).
        given = any(k.lower() == "authorization" for k, _ in headers)
        token = headers if stack is None or given else [*headers, ("Authorization", stack.bearer)]
        sent = {t: token for t in GATEWAYS}
        for name, model in models.items():
            x = makers[name]()[1]
            servers = Servers(python, model, args, work / "sock")
            try:
                # The same Nginx, the same upstream block (keepalive 32) for either address.
                gateway.apply_routes([ModelRoutes(name, (VersionRoute("1", "ready", servers.ours_address),
                                                         VersionRoute("2", "ready", f"127.0.0.1:{servers.ours_port}")))])
                servers.urls[GATEWAY_UNIX] = f"{settings.gateway_url}/model/{name}/1/invocations"
                servers.urls[GATEWAY_TCP] = f"{settings.gateway_url}/model/{name}/2/invocations"
                print(f"{name}: gateway upstreams: {GATEWAY_UNIX} -> {servers.ours_address}, "
                      f"{GATEWAY_TCP} -> 127.0.0.1:{servers.ours_port}", flush=True)
                bodies = write_bodies(name, x, work)
                if stack is not None:
                    for target in GATEWAYS:
                        status, _ = post(servers.urls[target], bodies[1].read_bytes(), headers)
                        print(f"{name}: {target} without a token -> HTTP {status}", flush=True)
                        t0 = time.monotonic()
                        status, _ = post(servers.urls[target], bodies[1].read_bytes(), sent[target])
                        print(f"{name}: {target}, first request with the token (a cold access decision: MLflow "
                              f"asked) -> HTTP {status} in {(time.monotonic() - t0) * 1000:.0f} ms", flush=True)
                        # On a loaded machine the first check can outlast the API's wait for MLflow
                        # (503): measured from an established decision, as a served model runs.
                        deadline = time.monotonic() + 120
                        while status != 200 and time.monotonic() < deadline:
                            time.sleep(1)
                            status, _ = post(servers.urls[target], bodies[1].read_bytes(), sent[target])
                        if status != 200:
                            raise SystemExit(f"{name}: {target} still answers HTTP {status} with the token")
                answers = {t: post(u, bodies[1000].read_bytes(), sent.get(t, headers)) for t, u in servers.urls.items()}
                mlflow_answer = json.loads(answers["mlflow models serve -w 1"][1])
                same = all(s == 200 and json.loads(b) == mlflow_answer for s, b in answers.values())
                print(f"{name}: 1,000-row answers identical across all servers: {same}", flush=True)
                for rows, body in bodies.items():
                    for c in levels:
                        best = None
                        for target, url in servers.mlflow().items():
                            r = measure(target, name, rows, url, body, c, args, work, headers)
                            results.append(r)
                            best = r if best is None or r.rps > best.rps else best
                        for target in OURS:
                            r = measure(target, name, rows, servers.urls[target], body, c, args, work,
                                        sent.get(target, headers))
                            results.append(r)
                            print(line(r, best), flush=True)
                for target, proc in servers.procs.items():
                    n, rss, pss = procmem.tree_memory(proc.pid)
                    print(f"{name}: memory of {target}: {n} processes, RSS {rss / 2**20:.0f} MiB, "
                          f"PSS {pss / 2**20:.0f} MiB", flush=True)
                gateway_overhead(name, servers.urls, bodies[1], work, {t: sent.get(t, headers) for t in servers.urls})
                if name == "iris":
                    big_request(x, work, servers.urls[GATEWAY_UNIX], sent[GATEWAY_UNIX])
            finally:
                servers.stop()
    if args.registration:
        from tests.benchmarks import registration

        for label, seconds in registration.measure(lambda i: iris_model(i), auth=not args.no_auth):
            print(f"registration -> READY ({label}): {seconds:.1f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)


def gateway_overhead(name: str, urls: dict[str, str], body: Path, work: Path,
                     headers: dict[str, list[tuple[str, str]]], rounds: int = 5, seconds: int = 2) -> None:
    """p50 through the gateway minus p50 direct, single rows at one connection, for the Unix and
    the TCP upstream. Direct, Unix and TCP runs alternate (the order of the two upstreams swapped
    every round) and median differences are printed, so a busy moment of a shared machine does
    not land on one side only; "Unix - TCP" is the median of the per-round differences."""
    p50: dict[str, list[float]] = {t: [] for t in OURS}
    for i in range(rounds):
        for target in ("ours (direct)", *(GATEWAYS if i % 2 == 0 else reversed(GATEWAYS))):
            p50[target].append(wrk.run(urls[target], body, 1, seconds, work, headers[target])[1])
    direct = p50["ours (direct)"]
    for target in GATEWAYS:
        diffs = [g - d for g, d in zip(p50[target], direct, strict=True)]
        print(f"{name}: gateway added latency, {target.removeprefix('ours (gateway, ').rstrip(')')} upstream "
              f"(rows=1 c=1, median of {rounds} alternating rounds): p50 {statistics.median(diffs):+.3f} ms "
              f"(full {statistics.median(p50[target]):.3f} ms, direct {statistics.median(direct):.3f} ms)", flush=True)
    unix_tcp = [u - t for u, t in zip(p50[GATEWAY_UNIX], p50[GATEWAY_TCP], strict=True)]
    print(f"{name}: Unix upstream - TCP upstream, p50 through the gateway: {statistics.median(unix_tcp):+.3f} ms "
          f"(per round: {', '.join(f'{d:+.3f}' for d in unix_tcp)})", flush=True)


def big_request(x: pd.DataFrame, work: Path, url: str, headers: list[tuple[str, str]]) -> None:
    """A request just under 16 MiB (Nginx's client_max_body_size 16m) through the gateway."""
    limit = 16 * 2**20
    row = json.dumps(x.iloc[0].round(4).tolist())
    n = (limit - 200) // (len(row) + 1)
    body = ('{"dataframe_split": {"columns": ' + json.dumps(list(x.columns)) + ', "data": ['
            + ",".join([row] * n) + "]}}").encode()
    assert len(body) <= limit
    t0 = time.monotonic()
    status, answer = post(url, body, headers)
    took = time.monotonic() - t0
    got = len(json.loads(answer).get("predictions", [])) if status == 200 else 0
    print(f"16 MB request: {len(body) / 2**20:.2f} MiB, {n} rows -> HTTP {status}, {got} predictions, "
          f"{took:.2f} s", flush=True)
    too_big = body + b" " * (limit - len(body) + 1024)  # still valid JSON, just past the limit
    status, _ = post(url, too_big, headers)
    print(f"{len(too_big)} byte request (over 16 MiB) -> HTTP {status}", flush=True)


if __name__ == "__main__":
    main()
