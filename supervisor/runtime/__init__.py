"""Runtimes: where a model's versions run. One interface (``base.Runtime``), two engines."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervisor.runtime.base import Runtime
    from supervisor.settings import Settings


def make_runtime(settings: Settings) -> Runtime:
    """The runtime named by ``settings.runtime``."""
    if settings.runtime == "process":
        from supervisor.runtime.process import ProcessRuntime

        return ProcessRuntime(settings)
    if settings.runtime == "docker":
        from supervisor.runtime.docker import DockerRuntime

        return DockerRuntime(settings)
    if settings.runtime == "swarm":
        from supervisor.runtime.swarm import SwarmRuntime

        return SwarmRuntime(settings)
    raise ValueError(f"unknown runtime {settings.runtime!r} (known: process, docker, swarm)")
