"""What the hostile-model suite needs to know about a runtime: where a model's socket, state,
processes, uid and cgroups are, as seen from outside the box. One class per runtime, so the same
checks run on another runtime once it has a ``Layout`` of its own (``LAYOUTS``).

Also the client side of ``hostile_model.py``: logging it (as "models from code", with exactly
the neighbour's requirements, so every hostile model reuses the neighbour's environment) and
asking it to attack (``attack``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import requests

from supervisor import naming
from supervisor.isolation import pidns
from supervisor.runtime import sockets
from supervisor.runtime.images import CONTAINER_STATE_DIR, MODELS_ROOT
from supervisor.runtime.process import PACKAGE_DIR
from tests.e2e.conftest import System
from tests.e2e.procfind import argv_of

MODEL_CODE = Path(__file__).with_name("hostile_model.py")
BOX_API = "/api/2.0/modelserve/served-models"


class Layout(Protocol):
    """Where things of a served model are on one runtime, from outside its box, and how the box
    sees them (``in_box``)."""

    system: System
    sockets: Path
    sandbox: str  # what the health check names as the box

    def socket_dir(self, model: str) -> Path: ...
    def socket_path(self, model: str, version: str) -> Path: ...
    def state_dir(self, model: str) -> Path: ...
    def host_files(self, model: str) -> dict[str, Path]: ...
    def model_files(self, model: str, version: str) -> Path: ...
    def box_pid(self, model: str) -> int: ...
    def box_pids(self, model: str) -> list[int]: ...
    def python_of(self, model: str, version: str) -> Path: ...
    def cgroup_dir(self, model: str, controller: str) -> Path: ...
    def supervisor_pids(self) -> dict[str, int]: ...
    def in_box(self, model: str, path: Path) -> str: ...
    def own_readonly(self, model: str, version: str) -> list[str]: ...
    def own_markers(self, model: str) -> list[str]: ...
    def own_root_entries(self) -> set[str]: ...
    def restart_box(self, model: str) -> None: ...


class _Common:
    """What both runtimes share: model files, the supervisor's pids, a box's processes and
    cgroups found from its first process."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.data = system.data_dir
        self.sockets = Path(system.env.get("MODELSERVE_SOCKET_DIR") or self.data / "sock")

    def model_files(self, model: str, version: str) -> Path:
        return self.data / "models" / naming.model_id(model) / version

    def box_pid(self, model: str) -> int:
        raise NotImplementedError

    def box_pids(self, model: str) -> list[int]:
        first = self.box_pid(model)
        return [first, *pidns.descendants(first)]

    def cgroup_dir(self, model: str, controller: str) -> Path:
        """The cgroup (v1) of ``controller`` the box's first process is in."""
        for line in Path(f"/proc/{self.box_pid(model)}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                return Path("/sys/fs/cgroup") / controllers / path.lstrip("/")
        raise AssertionError(f"the box of {model} is in no {controller} cgroup")

    def supervisor_pids(self) -> dict[str, int]:
        up = json.loads((self.data / "run" / "up.json").read_text())
        return {name: int(pid) for name, pid in up["children"].items()}

    def host_dir(self, model: str) -> Path:
        return self.data / "hosts" / naming.model_id(model)


class ProcessLayout(_Common):
    """The process runtime: ``<data_dir>/hosts/<model id>/`` (host.json, spec/, box/), sockets in
    ``<data_dir>/sock/<hash>/``, the box's first process in host.json. Bubblewrap binds what a box
    is given at the same paths, so the box sees every path as it is outside."""

    sandbox = "bubblewrap"

    def socket_dir(self, model: str) -> Path:
        return sockets.model_dir(self.sockets, model)

    def socket_path(self, model: str, version: str) -> Path:
        return self.socket_dir(model) / sockets.socket_name(version)

    def state_dir(self, model: str) -> Path:
        return self.host_dir(model) / "box"

    def host_files(self, model: str) -> dict[str, Path]:
        return {"host.json": self.host_dir(model) / "host.json", "status": self.state_dir(model) / "status.json",
                "version log": self.state_dir(model) / "versions" / "1.log",
                "spec": self.host_dir(model) / "spec" / "spec.json"}

    def python_of(self, model: str, version: str) -> Path:
        """The interpreter of the version's environment (what its scoring server runs)."""
        spec = json.loads((self.host_dir(model) / "spec" / "spec.json").read_text())
        return Path(spec["versions"][version]["argv"][0])

    def box_pid(self, model: str) -> int:
        return int(json.loads((self.host_dir(model) / "host.json").read_text())["pid"])

    def in_box(self, model: str, path: Path) -> str:
        return str(path)

    def own_readonly(self, model: str, version: str) -> list[str]:
        python = self.python_of(model, version)
        env_dir = python.parent.parent
        assert python.exists(), python
        return [str(self.model_files(model, version)), str(env_dir), str(env_dir / "lib"),
                str(python.resolve().parent.parent), str(PACKAGE_DIR / "host"), str(PACKAGE_DIR / "scoring"),
                str(self.host_dir(model) / "spec"), str(self.host_dir(model))]

    def own_markers(self, model: str) -> list[str]:
        return [str(self.state_dir(model)), "server.py", "bwrap"]

    def own_root_entries(self) -> set[str]:
        return set()

    def restart_box(self, model: str) -> None:
        try_attack(self.system, model, "kill_box", timeout=30)


class DockerLayout(_Common):
    """The docker runtime: ``<data_dir>/hosts/<model id>/active.json`` names the model's container;
    its state dir ``hosts/<model id>/<container name>/`` is the container's ``/state`` and its
    socket dir (in active.json) the container's ``/run/modelserve/sock``; the model's files, its
    environment and the host code are in its image."""

    sandbox = "Docker container"

    def active(self, model: str) -> dict[str, Any]:
        return dict(json.loads((self.host_dir(model) / "active.json").read_text()))

    def socket_dir(self, model: str) -> Path:
        return Path(self.active(model)["socket_dir"])

    def socket_path(self, model: str, version: str) -> Path:
        return self.socket_dir(model) / sockets.socket_name(version)

    def state_dir(self, model: str) -> Path:
        return self.host_dir(model) / self.active(model)["name"]

    def host_files(self, model: str) -> dict[str, Path]:
        state = self.state_dir(model)
        return {"active.json": self.host_dir(model) / "active.json", "status": state / "status.json",
                "version log": state / "versions" / "1.log", "spec": state / "spec.json"}

    def python_of(self, model: str, version: str) -> Path:
        spec = json.loads((self.state_dir(model) / "spec.json").read_text())
        return Path(spec["versions"][version]["argv"][0])

    def _container(self, model: str) -> Any:
        import docker

        client = docker.from_env(timeout=60)
        return client.containers.get(self.active(model)["id"])

    def box_pid(self, model: str) -> int:
        """The container's first process, as the machine numbers it; 0 while none runs."""
        import docker

        try:
            return int(self._container(model).attrs["State"]["Pid"])
        except docker.errors.NotFound:
            return 0

    def in_box(self, model: str, path: Path) -> str:
        for outside, inside in ((self.state_dir(model), CONTAINER_STATE_DIR),
                                (self.socket_dir(model), sockets.IN_BOX_DIR)):
            if path == outside or path.is_relative_to(outside):
                return str(Path(inside) / path.relative_to(outside))
        return str(path)

    def own_readonly(self, model: str, version: str) -> list[str]:
        env_dir = self.python_of(model, version).parent.parent
        return [f"{MODELS_ROOT}/{version}", str(env_dir), str(env_dir / "lib"), "/opt/modelserve", "/usr/local",
                "/usr/lib"]

    def own_markers(self, model: str) -> list[str]:
        return [CONTAINER_STATE_DIR, "keeper.py", "server.py"]

    def own_root_entries(self) -> set[str]:
        return {"run"}  # the image's own /run, not the data dir's

    def restart_box(self, model: str) -> None:
        # Inside, the keeper is the container's PID 1, which no process of the container can kill.
        self._container(model).kill()


LAYOUTS: dict[str, type[ProcessLayout] | type[DockerLayout]] = {"process": ProcessLayout, "docker": DockerLayout}


def cmdline(pid: int) -> str:
    return " ".join(argv_of(pid)).strip()


def requirements_of(model_files: Path) -> list[str]:
    lines = (model_files / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def log_hostile(system: System, name: str, pip_requirements: list[str]) -> str:
    import mlflow

    mlflow.set_tracking_uri(system.url)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE), pip_requirements=pip_requirements,
                                       registered_model_name=name)
    return str(info.registered_model_version)


def update_box(system: System, name: str, **change: Any) -> dict[str, Any]:
    r = requests.post(f"{system.url}{BOX_API}/update-box", json={"registered_model_name": name, **change}, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json()["box"])


def get_box(system: System, name: str) -> dict[str, Any]:
    r = requests.get(f"{system.url}{BOX_API}/get-box", params={"registered_model_name": name}, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json()["box"])


def invocations(system: System, name: str, version: str = "1") -> str:
    return f"{system.url}/model/{name}/{version}/invocations"


def attack(system: System, name: str, action: str, timeout: float = 120.0, **args: Any) -> dict[str, Any]:
    """One prediction of a hostile model: its JSON report (AssertionError when it did not answer)."""
    r = requests.post(invocations(system, name), json={"dataframe_records": [{"action": action,
                                                                              "args": json.dumps(args)}]},
                      timeout=timeout)
    assert r.status_code == 200, f"{name} {action}: {r.status_code} {r.text[:500]}"
    return dict(json.loads(r.json()["predictions"][0]))


def try_attack(system: System, name: str, action: str, timeout: float = 120.0, **args: Any) -> requests.Response | str:
    """Like ``attack`` for an attack that may kill the server answering it: the response or why none."""
    try:
        return requests.post(invocations(system, name), json={"dataframe_records": [{"action": action,
                                                                                     "args": json.dumps(args)}]},
                             timeout=timeout)
    except requests.RequestException as exc:
        return str(exc)


def answers(system: System, name: str) -> bool:
    try:
        return attack(system, name, "ping", timeout=30).get("ok") is True
    except (AssertionError, requests.RequestException, ValueError, KeyError):
        return False


def events(system: System, name: str) -> list[str]:
    r = system.api("GET", "get-event-history", registered_model_name=name)
    return [e["message"] for e in r.json().get("events", [])] if r.status_code == 200 else []


def alive(pid: int) -> bool:
    """Whether ``pid`` exists (root signals anything, so EPERM never hides one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
