"""Scoring throughput through the gateway with 1, 2 and 3 replicas of one version, on the same
three-node swarm the e2e test makes on this machine (``tests/e2e/swarm.py``).

    python -m tests.benchmarks.swarm_replicas [--seconds 20] [--concurrency 8]

All three "nodes" share this machine's two cores (and the gateway and wrk run on them too), so
more replicas cannot add CPU: the figures show what a replica costs (memory, CPU of the tasks)
and what the gateway's spreading over them costs, not how a real cluster scales. Needs root (it
makes network namespaces), the shared engine and the base image (``make docker-engine``).
Bounded: every wait ends by itself.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tests.benchmarks import wrk
from tests.e2e.conftest import registrar, running_system
from tests.e2e.swarm import three_node_swarm
from tests.e2e.test_docker import BASE_IMAGE
from tests.e2e.test_swarm import prewarm

NAME = "bench-swarm"
BOXES = "/api/2.0/modelserve/served-models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True).frame
    iris.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width", "target"]
    rows = iris.drop(columns=["target"]).head(4).to_dict(orient="records")
    with tempfile.TemporaryDirectory(prefix="ms-bench-swarm-") as tmp, three_node_swarm(Path("/tmp")) as swarm:
        work = Path(tmp)
        prewarm(swarm, iris, work / "prewarm")
        extra = {"MODELSERVE_RUNTIME": "swarm", "MODELSERVE_DOCKER_BASE_IMAGE": BASE_IMAGE,
                 "MODELSERVE_SWARM_MANAGER": swarm.manager.docker_host,
                 "MODELSERVE_REGISTRY": swarm.registry_address, "MODELSERVE_REGISTRY_PUSH": swarm.push_address}
        (work / "system").mkdir()
        with running_system(work / "system", extra) as system:
            registrar(system, iris)(NAME)
            assert system.api("POST", "enable", registered_model_name=NAME).status_code == 200
            system.wait_version(NAME, "1", "VERSION_STATE_READY", timeout=900)
            body = work / "rows.json"
            body.write_text(json.dumps(rows))
            url = f"{system.url}/model/{NAME}/1/invocations"
            print(f"{'replicas':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  memory per replica (MiB)")
            for n in (1, 2, 3):
                r = system.raw.post(f"{system.url}{BOXES}/update-box", auth=system.admin, timeout=30,
                                    json={"registered_model_name": NAME, "replicas": n})
                assert r.status_code == 200, r.text

                def running(want: int = n) -> bool:
                    status = system.api("GET", "get-status", registered_model_name=NAME).json()["endpoint_status"]
                    return sum(x["state"] == "running" for x in status.get("replicas", [])) == want

                system.wait_for(f"{n} replicas running", running, timeout=600)
                time.sleep(3)  # one more render: every replica in the upstream
                rps, p50, p99, errors = wrk.run(url, body, args.concurrency, args.seconds, work,
                                                headers=[("Authorization", f"Bearer {system.token}")])
                memory = []
                for node in swarm.nodes:
                    out = node.docker("stats", "--no-stream", "--format", "{{.MemUsage}}", check=False)
                    memory += [line.split("/")[0].strip() for line in out.splitlines() if line.strip()]
                print(f"{n:>8} {rps:>8.0f} {p50:>8.1f} {p99:>8.1f} {errors:>6}  {', '.join(memory)}", flush=True)


if __name__ == "__main__":
    main()
