"""Registration -> READY with the docker runtime, with a cold and with a warm layer cache.

    python -m tests.benchmarks.docker_ready [--base-image modelserve-base:bookworm]

One run starts the whole system (``modelserve up --detach``, runtime docker, host networking, free
127.0.0.1 ports) and measures, from the moment a version is registered until ``list-versions``
says READY:

* cold: version 1 of a model whose requirements no environment image holds yet (an extra pin
  makes them unique to this benchmark, and the run deletes that environment image at the end, so
  the next run is cold again): environment image build + model image + container + model load;
* warm: version 2 of the same model, same requirements: the environment image and every earlier
  layer are reused; only the new version's files, a new container and the load remain.

Needs a running Docker engine and the base image (``make docker-engine``). Bounded: every wait
ends by itself.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import requests
from mlflow import MlflowClient

from tests.e2e.conftest import registrar, running_system

NAME = "bench-docker-ready"
# Part of the requirements only to make the environment this benchmark's own (small, pure Python).
MARKER_REQUIREMENT = "tabulate==0.9.0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", default="modelserve-base:bookworm")
    parser.add_argument("--timeout", type=float, default=1200.0)
    args = parser.parse_args()
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True).frame
    iris.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width", "target"]
    extra = {"MODELSERVE_RUNTIME": "docker", "MODELSERVE_DOCKER_BASE_IMAGE": args.base_image,
             "MODELSERVE_DOCKER_NETWORK": "host"}
    with tempfile.TemporaryDirectory(prefix="ms-bench-docker-") as tmp, running_system(Path(tmp), extra) as system:
        register = registrar(system, iris)
        MlflowClient(system.url).create_registered_model(NAME)
        assert system.api("POST", "enable", registered_model_name=NAME).status_code == 200

        def timed(label_shift: int) -> tuple[str, float]:
            version = register(NAME, label_shift=label_shift, extra_pip_requirements=[MARKER_REQUIREMENT])
            started = time.monotonic()
            system.wait_version(NAME, version, "VERSION_STATE_READY", timeout=args.timeout)
            return version, time.monotonic() - started

        v1, cold = timed(0)
        logs = system.api("GET", "get-version-logs", registered_model_name=NAME, endpoint_version_name=v1).json()
        was_cold = "reusing environment image" not in logs["logs"]
        v2, warm = timed(1)
        rows = iris.drop(columns=["target"]).head(2).to_dict(orient="records")
        ok = requests.post(f"{system.url}/model/{NAME}/{v2}/invocations", json=rows, timeout=30).status_code == 200
        env_hash = system.versions(NAME)[v1].get("env_hash") or _env_hash_from(logs["logs"])
        print(f"base image {args.base_image}; registration -> READY, runtime docker")
        print(f"cold layer cache (version {v1}, new environment image{'' if was_cold else ' NOT cold: reused'}): "
              f"{cold:7.1f} s")
        print(f"warm layer cache (version {v2}, same requirements):           {warm:7.1f} s   "
              f"x{cold / warm:.1f} faster; scores: {'yes' if ok else 'NO'}")
        system.api("POST", "disable", registered_model_name=NAME)
    if env_hash:
        # The next run must be cold again: drop this benchmark's environment image.
        images = subprocess.run(["docker", "images", "-q", "--filter", f"label=modelserve.env={env_hash}"],
                                capture_output=True, text=True, check=False).stdout.split()
        if images:
            subprocess.run(["docker", "rmi", "-f", *images], capture_output=True, check=False)


def _env_hash_from(log: str) -> str:
    for line in log.splitlines():
        if "environment " in line and " from " in line:
            return line.split("environment ", 1)[1].split()[0]
    return ""


if __name__ == "__main__":
    main()
