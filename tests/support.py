"""Small helpers shared by the tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from supervisor.registry import RegistryModel, RegistryUnavailable


def wait_until(what: str, cond: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """``cond()``'s first true value, polled every ``every`` s; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[dict[str, str]]:
    """``values`` in ``os.environ`` until the end of the block; then what was there before."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield values
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def process_alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie does not: it holds no port and answers nothing)."""
    from supervisor.host.modelhost import cmdline

    return pid is not None and cmdline(pid) is not None


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeRegistry:
    """A registry held in a dict; ``down`` makes it answer like an unreachable one."""

    def __init__(self, models: dict[str, RegistryModel] | None = None) -> None:
        self.models: dict[str, RegistryModel] = dict(models or {})
        self.down = False
        self.files: dict[tuple[str, str], Path] = {}

    def get_model(self, name: str) -> RegistryModel | None:
        if self.down:
            raise RegistryUnavailable("connection refused")
        return self.models.get(name)

    def list_models(self) -> list[str]:
        if self.down:
            raise RegistryUnavailable("connection refused")
        return sorted(self.models)

    def fetch_files(self, name: str, version: str, paths: list[str], dest: Path) -> Path:
        """Copies from ``files[(name, version)]``, a local model dir standing in for the artifacts."""
        if self.down:
            raise RegistryUnavailable("connection refused")
        src = self.files.get((name, version))
        for rel in paths:
            if src is not None and (src / rel).is_file():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy(src / rel, dest / rel)
        return dest

class FakeUsers:
    """MLflow's users and per-model permissions held in dicts (the ``MlflowUsers`` interface)."""

    def __init__(self) -> None:
        from supervisor.auth.mlflow_users import User

        self._user = User
        self.passwords: dict[str, str] = {}
        self.admins: set[str] = set()
        self.grants: dict[tuple[str, str], str] = {}
        self.default = "NO_PERMISSIONS"
        self.calls = 0

    def add(self, name: str, password: str, admin: bool = False) -> None:
        self.passwords[name] = password
        if admin:
            self.admins.add(name)

    def check_password(self, username: str, password: str) -> Any:
        self.calls += 1
        ok = self.passwords.get(username) == password
        return self._user(username, username in self.admins) if ok else None

    def user(self, username: str) -> Any:
        self.calls += 1
        return self._user(username, username in self.admins) if username in self.passwords else None

    def permission(self, username: str, model: str) -> str:
        self.calls += 1
        return self.grants.get((username, model), self.default)
