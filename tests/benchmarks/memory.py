"""Memory per served version, this tree's scoring server against an earlier commit's, in one run.

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python -m tests.benchmarks.memory --baseline e329b16

A change to how a version's processes are arranged (issue 18: a supervising parent that keeps
the socket, workers that outlive it) must not make a version cost more: both servers load the
same scikit-learn model, get the same requests, and their process trees' PSS (what the machine
pays; RSS counts shared pages once per process) is printed side by side with the ratio. The
earlier commit's scoring folder is taken with ``git show``, so nothing of it is kept in the tree.
Each server is started as the model host of its day started it (``--handoff-dir`` where the
server knows it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.benchmarks import procmem
from tests.benchmarks.scoring import iris_model, post, save
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
SCORING = ROOT / "supervisor" / "scoring"


def baseline_folder(ref: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for path in sorted(SCORING.glob("*.py")):
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:supervisor/scoring/{path.name}"],
                               capture_output=True)
        if shown.returncode == 0:
            (dest / path.name).write_bytes(shown.stdout)
    return dest


def serve(server: Path, model: Path, workers: str, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = [sys.executable, str(server), "--model-dir", str(model), "--port", str(port), "--workers", workers]
    if "--handoff-dir" in server.read_text():
        argv += ["--handoff-dir", str(work / f"handoff-{port}")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if post(f"{url}/ping", b"", [], timeout=2)[0] in (200, 405):
                return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{server} did not answer within 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the git commit to compare with")
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelserve-memory-") as tmp:
        work = Path(tmp)
        model, x = iris_model()
        model_dir = save(model, x, work / "model")
        body = json.dumps({"dataframe_split": x.head(1).to_dict(orient="split")}).encode()
        headers = [("Content-Type", "application/json")]
        trees = {f"baseline {args.baseline}": baseline_folder(args.baseline, work / "baseline") / "server.py",
                 "this tree": SCORING / "server.py"}
        figures: dict[str, tuple[int, int, int]] = {}
        for label, server in trees.items():
            proc, url = serve(server, model_dir, args.workers, work)
            try:
                for _ in range(args.requests):
                    status, _ = post(f"{url}/invocations", body, headers)
                    assert status == 200, status
                time.sleep(1)
                figures[label] = procmem.tree_memory(proc.pid)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)  # its own group: the parent and its workers
                proc.wait(timeout=60)
        for label, (n, rss, pss) in figures.items():
            print(f"{label}: {n} processes, RSS {rss / 2**20:.0f} MiB, PSS {pss / 2**20:.0f} MiB", flush=True)
        (_, _, before), (_, _, after) = figures.values()
        print(f"PSS per served version, this tree / baseline: {after / before:.3f}", flush=True)


if __name__ == "__main__":
    main()
