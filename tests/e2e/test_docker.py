"""The docker runtime end to end, with a real Docker engine: one system (``MODELSERVE_RUNTIME=docker``;
model containers without network, scored through Unix sockets in bind-mounted directories)
shared by the whole module, because every image and environment built here costs CI minutes.
The tests run in order and build on each other: serve -> new version under continuous load ->
the container is a box -> failing version -> killed container -> restarted supervisor ->
archive -> disable.

The engine is required, not optional: without one these tests fail (CI installs and starts it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from tests.e2e.conftest import System, registrar, running_system
from tests.e2e.load import Load

pytestmark = pytest.mark.e2e

NAME = "iris docker"  # a space: the name must be escaped everywhere it goes
BASE_IMAGE = os.environ.get("MODELSERVE_DOCKER_BASE_IMAGE", "modelserve-base:bookworm")


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=True).stdout.strip()


def require_engine() -> None:
    """A running Docker engine with the base image: what every docker-runtime system needs."""
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                          timeout=60)
    assert info.returncode == 0, f"these tests need a running Docker engine (dockerd): {info.stderr.strip()}"
    assert subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode == 0, (
        f"base image {BASE_IMAGE} is missing: run images/build-base-image.sh")


@pytest.fixture(scope="module")
def dsystem(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    require_engine()
    extra = {"MODELSERVE_RUNTIME": "docker", "MODELSERVE_DOCKER_BASE_IMAGE": BASE_IMAGE,
             "MODELSERVE_DOCKER_DRAIN_SECONDS": "1"}
    with running_system(tmp_path_factory.mktemp("modelserve-docker"), extra) as sys_:
        yield sys_


@pytest.fixture(scope="module")
def dregister(dsystem: System, iris: pd.DataFrame) -> Callable[..., str]:
    return registrar(dsystem, iris)


def containers(system: System) -> list[dict[str, str]]:
    """The model containers this system started: id, name, image, state."""
    from supervisor.runtime.docker import DockerRuntime
    from supervisor.settings import Settings

    instance = DockerRuntime(Settings(data_dir=system.data_dir)).instance
    out = docker("ps", "-a", "--no-trunc", "--filter", f"label=modelserve.instance={instance}",
                 "--format", "{{.ID}}\t{{.Names}}\t{{.Image}}\t{{.State}}")
    return [dict(zip(("id", "name", "image", "state"), line.split("\t"), strict=True))
            for line in out.splitlines() if line]


def answer(url: str, rows: list[dict[str, Any]]) -> list[Any] | None:
    try:
        r = requests.post(url, json=rows, timeout=30)
    except requests.RequestException:
        return None
    return list(r.json()) if r.status_code == 200 else None


def messages(system: System) -> list[str]:
    return [e["message"] for e in system.api("GET", "get-event-history", registered_model_name=NAME).json()["events"]]


def test_serve_and_deploy_a_new_version_without_losing_a_request(
        dsystem: System, dregister: Callable[..., str], iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).head(4).to_dict(orient="records")
    quoted = NAME.replace(" ", "%20")
    v1_url = f"{dsystem.url}/model/{quoted}/1/invocations"
    prod_url = f"{dsystem.url}/model/{quoted}/Production/invocations"

    assert dregister(NAME) == "1"
    assert dsystem.api("POST", "enable", registered_model_name=NAME).status_code == 200
    dsystem.wait_version(NAME, "1", "VERSION_STATE_READY", timeout=900)
    status = dsystem.api("GET", "get-status", registered_model_name=NAME).json()["endpoint_status"]
    assert status["state"] == "ENDPOINT_STATE_READY"
    first = answer(v1_url, rows)
    assert first is not None and len(first) == 4
    [running] = [c for c in containers(dsystem) if c["state"] == "running"]
    assert running["name"].startswith("modelserve-model-iris-docker-")

    MlflowClient(dsystem.url).transition_model_version_stage(NAME, "1", "Production")
    dsystem.wait_for("Production routed", lambda: answer(prod_url, rows) == first, timeout=120)

    # Version 2 is built and started in a new container while version 1 keeps answering.
    with Load([v1_url, prod_url], rows) as load:
        assert dregister(NAME, label_shift=1) == "2"
        dsystem.wait_version(NAME, "2", "VERSION_STATE_READY", timeout=600)
        dsystem.wait_for("old container removed",
                         lambda: [c["id"] for c in containers(dsystem)] not in ([], [running["id"]])
                         and len(containers(dsystem)) == 1, timeout=120)
        time.sleep(1)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 10
    [new] = containers(dsystem)
    assert new["id"] != running["id"] and new["state"] == "running"
    second = answer(f"{dsystem.url}/model/{quoted}/2/invocations", rows)
    assert second is not None and second != first
    assert answer(v1_url, rows) == first
    # Same requirements: version 2 reused version 1's environment image.
    build_log = dsystem.api("GET", "get-version-logs", registered_model_name=NAME,
                            endpoint_version_name="2").json()["logs"]
    assert "reusing environment image" in build_log
    assert "scoring server: model loaded" in build_log  # the version's own output, from the container


def test_the_container_is_the_models_box(dsystem: System, iris: pd.DataFrame) -> None:
    import json

    from supervisor.isolation.box import MiB
    from supervisor.settings import Settings

    rows = iris.drop(columns=["target"]).head(2).to_dict(orient="records")
    [container] = containers(dsystem)
    info = json.loads(docker("inspect", container["id"]))[0]
    host, config = info["HostConfig"], info["Config"]
    settings = Settings()  # the same MODELSERVE_* environment as the system's: the same limits
    uid, _, gid = config["User"].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert host["ReadonlyRootfs"] is True and "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == settings.model_pids
    assert host["Memory"] == host["MemorySwap"] == settings.model_memory_mb * MiB
    assert host["NanoCpus"] == int(settings.model_cpus * 1e9)
    assert host["NetworkMode"] == "none" and "/tmp" in host["Tmpfs"]
    assert not {"MODELSERVE_ADMIN_PASSWORD", "MLFLOW_TRACKING_PASSWORD"} & {e.split("=")[0] for e in config["Env"]}
    assert docker("exec", container["id"], "ls", "/sys/class/net").split() == ["lo"]
    assert subprocess.run(["docker", "exec", container["id"], "touch", "/opt/modelserve/x"],
                          capture_output=True).returncode != 0  # read-only root
    mounts = {m["Destination"]: Path(m["Source"]) for m in info["Mounts"]}
    for where in ("/run/modelserve/sock", "/state"):
        st = mounts[where].stat()
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o700, int(uid), int(gid)), where
    sock = mounts["/run/modelserve/sock"] / "2.sock"
    assert sock.is_socket()
    if os.geteuid() == 0:
        # Another local user (not the container's) cannot reach the socket around the gateway.
        probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
                 "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(3)\n")
        assert subprocess.run(["python3", "-c", probe, str(sock)], user=12345, group=12345,
                              timeout=30).returncode == 3
    assert answer(f"{dsystem.url}/model/{quote(NAME)}/2/invocations", rows) is not None

    # The memory limit holds, and the runtime finds the kernel's kills where it looks for them: a
    # process beside the scoring servers that grows past the limit is the one killed, the
    # servers go on.
    from supervisor.runtime.docker import container_cgroups

    cgroups = container_cgroups(container["id"])
    assert cgroups is not None
    before = cgroups.oom_kills()
    grow = "x = []\nwhile True:\n    x.append(bytearray(64 << 20))\n"
    hog = subprocess.run(["docker", "exec", container["id"], "python3", "-c", grow], capture_output=True, timeout=120)
    assert hog.returncode == 137, hog
    assert cgroups.oom_kills() > before
    assert answer(f"{dsystem.url}/model/{quote(NAME)}/2/invocations", rows) is not None


def test_a_version_whose_build_fails_is_failed_alone(dsystem: System, dregister: Callable[..., str],
                                                      iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).head(2).to_dict(orient="records")
    before = containers(dsystem)
    version = dregister(NAME, extra_pip_requirements=["modelserve-no-such-package-anywhere==0.0.1"])
    failed = dsystem.wait_version(NAME, version, "VERSION_STATE_FAILED", timeout=600)
    assert "Environment build failed" in failed["state_message"] or "build" in failed["state_message"]
    logs = dsystem.api("GET", "get-version-logs", registered_model_name=NAME,
                       endpoint_version_name=version).json()["logs"]
    assert "modelserve-no-such-package-anywhere" in logs and "docker build" in logs
    assert containers(dsystem) == before  # nothing else was touched
    assert answer(f"{dsystem.url}/model/{NAME}/2/invocations", rows) is not None
    MlflowClient(dsystem.url).transition_model_version_stage(NAME, version, "Archived")
    dsystem.wait_for("failed version gone", lambda: version not in dsystem.versions(NAME), timeout=120)


def logged_model(system: System, iris: pd.DataFrame, extra: list[str], label_shift: int = 0) -> tuple[str, str]:
    """(model URI, environment hash) of a new logged, not yet registered, classifier."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from supervisor.envs import read_env_spec

    mlflow.set_tracking_uri(system.url)
    x, y = iris.drop(columns=["target"]), (iris["target"] + label_shift) % 3
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(LogisticRegression(max_iter=500).fit(x, y), name="model",
                                        input_example=x.head(3), extra_pip_requirements=extra)
    local = mlflow.artifacts.download_artifacts(info.model_uri)
    return info.model_uri, read_env_spec(Path(local)).hash


def test_a_docker_build_killed_midway_tags_nothing_and_fails_alone(dsystem: System, iris: pd.DataFrame) -> None:
    import mlflow

    from supervisor.runtime.images import env_image_tag
    from tests.e2e.procfind import argv_of, parent_of, wait_for_process

    rows = iris.drop(columns=["target"]).head(2).to_dict(orient="records")
    before = containers(dsystem)
    uri, env_hash = logged_model(dsystem, iris, ["pyyaml>=5.1"])
    tag = env_image_tag(env_hash, BASE_IMAGE)
    # Left by an earlier run on this engine, it would be reused, not built (and so not killed).
    subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=120)

    def installing(pid: int, argv: list[str]) -> bool:
        # uv inside the build container, started by this environment's build script.
        return "install" in argv and "/tmp/modelserve-build/requirements.txt" in argv and \
            f"/tmp/modelserve-build/build-env.sh {env_hash}" in " ".join(argv_of(parent_of(pid)))

    with ThreadPoolExecutor(1) as pool:
        watching = pool.submit(wait_for_process, "uv in the environment image build", installing, 600)
        version = mlflow.register_model(uri, NAME).version
        os.kill(watching.result(), signal.SIGKILL)
    failed = dsystem.wait_version(NAME, str(version), "VERSION_STATE_FAILED", timeout=300)
    assert "Environment build failed" in failed["state_message"] and "137" in failed["state_message"], failed
    assert subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode != 0  # not tagged
    leftover = docker("ps", "-a", "--no-trunc", "--format", "{{.Command}}")
    assert f"build-env.sh {env_hash}" not in leftover  # the build's container went with it
    assert containers(dsystem) == before
    assert answer(f"{dsystem.url}/model/{quote(NAME)}/2/invocations", rows) is not None
    # With no image under its tag, the next build of this environment cannot reuse anything of
    # the killed one but the engine's cache of its completed steps (content-addressed); building
    # it again here would cost a cold environment image in CI, and the process runtime's test
    # (test_build_faults.py) already rebuilds a killed environment to READY.
    MlflowClient(dsystem.url).transition_model_version_stage(NAME, str(version), "Archived")
    dsystem.wait_for("the failed version gone", lambda: str(version) not in dsystem.versions(NAME), timeout=120)


def test_a_killed_container_is_restarted_with_an_event(dsystem: System, iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).head(2).to_dict(orient="records")
    [container] = containers(dsystem)
    docker("kill", container["id"])
    dsystem.wait_for("restart event", lambda: any(
        "exited unexpectedly" in m and "SIGKILL" in m for m in messages(dsystem)), timeout=120)
    for version in ("1", "2"):
        # A new container loading both versions: over a minute on a loaded machine.
        dsystem.wait_version(NAME, version, "VERSION_STATE_READY", timeout=300)
        assert answer(f"{dsystem.url}/model/{NAME}/{version}/invocations", rows) is not None
    [again] = containers(dsystem)
    assert again["state"] == "running"


def test_a_restarted_supervisor_adopts_the_container(dsystem: System, iris: pd.DataFrame) -> None:
    import json

    rows = iris.drop(columns=["target"]).head(2).to_dict(orient="records")
    [before] = containers(dsystem)
    up = json.loads((dsystem.data_dir / "run" / "up.json").read_text())
    for name in ("reconciler", "api"):
        os.killpg(up["children"][name], signal.SIGKILL)
    assert answer(f"{dsystem.url}/model/{NAME}/1/invocations", rows) is not None  # serving never depended on them
    dsystem.wait_for("supervisor back", lambda: dsystem.api("GET", "list").status_code == 200, timeout=120)
    reconciler_log = dsystem.data_dir / "logs" / "reconciler.log"
    dsystem.wait_for("a few ticks of the new reconciler",
                     lambda: reconciler_log.read_text(errors="replace").count("reconciler running") >= 2, timeout=120)
    time.sleep(4)
    assert containers(dsystem) == [before]  # the same container: adopted, not rebuilt
    assert dsystem.versions(NAME)["2"]["state"] == "VERSION_STATE_READY"
    assert answer(f"{dsystem.url}/model/{NAME}/2/invocations", rows) is not None


def test_archive_then_disable_removes_the_container(dsystem: System, iris: pd.DataFrame) -> None:
    rows = iris.drop(columns=["target"]).head(2).to_dict(orient="records")
    MlflowClient(dsystem.url).transition_model_version_stage(NAME, "1", "Archived")
    dsystem.wait_for("v1 removed", lambda: "1" not in dsystem.versions(NAME), timeout=120)
    dsystem.wait_for("v1 unrouted", lambda: requests.post(
        f"{dsystem.url}/model/{NAME}/1/invocations", json=rows, timeout=30).status_code == 404, timeout=120)
    assert answer(f"{dsystem.url}/model/{NAME}/2/invocations", rows) is not None
    dsystem.wait_for("one container serving v2", lambda: len(containers(dsystem)) == 1
                     and "1" not in docker("inspect", "--format", '{{index .Config.Labels "modelserve.versions"}}',
                                           containers(dsystem)[0]["id"]).split(","), timeout=180)
    assert dsystem.api("POST", "disable", registered_model_name=NAME).status_code == 200
    dsystem.wait_for("container gone", lambda: containers(dsystem) == [] and not list(
        Path(dsystem.data_dir / "hosts").glob("*/active.json")), timeout=120)
    dsystem.wait_for("stop recorded", lambda: any("Serving stopped" in m for m in messages(dsystem)), timeout=120)
