"""Small helpers shared by the tests and benchmarks."""

from __future__ import annotations

import socket

from supervisor.registry import RegistryModel, RegistryUnavailable


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

    def get_model(self, name: str) -> RegistryModel | None:
        if self.down:
            raise RegistryUnavailable("connection refused")
        return self.models.get(name)
