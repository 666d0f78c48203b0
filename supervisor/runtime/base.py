"""The runtime interface: one model = one host ("cluster") running one scoring server per version.

The reconciler only speaks this interface, so the process runtime (a detached local model host
per model) and the docker runtime (a container per model) are interchangeable. The interface is
declarative: ``apply_host`` is told the whole wanted version set of a model and makes it so,
idempotently; nothing here remembers what it started beyond what it can find again on disk
(process) or in container labels (docker), so a restarted supervisor adopts what runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from supervisor.envs import EnvSpec
    from supervisor.isolation.box import Box


@dataclass(frozen=True)
class VersionLaunch:
    """Everything needed to run one version's scoring server."""

    version: str
    python: Path  # the version environment's python executable
    model_dir: Path  # local copy of the version's MLflow model directory
    port: int  # the store's number for this version (no longer a listening port: servers use Unix sockets)
    env_hash: str
    batching: str = ""  # auto | on | off from the model's tag; empty: the settings' default


@dataclass
class VersionProcess:
    version: str
    running: bool
    pid: int | None = None
    restarts: int = 0  # restarts done by the model host since the host started
    last_exit: str | None = None  # human reason of the last exit, e.g. "killed by SIGKILL"


@dataclass
class HostState:
    model: str
    alive: bool
    pid: int | None = None
    versions: dict[str, VersionProcess] = field(default_factory=dict)
    reason: str | None = None  # why it is not alive, when known
    # Restarts of the model host process made inside a host that stayed alive (the keeper of a
    # container); its scoring servers kept serving through them.
    host_restarts: int = 0
    host_last_exit: str | None = None
    # Processes of this model the kernel killed for its box's memory limit, so far (0 where the
    # runtime cannot tell), and that limit.
    oom_kills: int = 0
    memory_limit_mib: int | None = None
    # Per version, its replicas ({"node": address, "state": task state}): a replicating runtime's.
    replicas: dict[str, list[dict[str, str]]] = field(default_factory=dict)


class Runtime(Protocol):
    name: str

    def env_ready(self, spec: EnvSpec) -> bool:
        """Whether the environment of ``spec`` is already built (so a deploy can say "reusing")."""

    def build_env(self, spec: EnvSpec, log_path: Path, box: Box, progress: Callable[[str], None] | None = None
                  ) -> Path:
        """Build (or reuse) the environment of ``spec``; return its python as the host will run it.
        Package code the build runs (source builds, the first import) runs inside ``box``, the
        box of the model asking. Raises ``EnvBuildError`` with the story in ``log_path`` when it
        cannot be built."""

    def apply_host(self, model: str, versions: list[VersionLaunch], box: Box) -> None:
        """Make the model's host run exactly ``versions`` inside ``box`` (start it if absent or
        dead; a changed box starts it anew)."""

    def stop_host(self, model: str) -> None:
        """Stop the model's host and every scoring server in it; forget its state."""

    def host_state(self, model: str) -> HostState | None:
        """Current state of the model's host, or None when no host was ever started/adopted."""

    def hosts(self) -> list[str]:
        """Names of models that have a host (running or dead) this runtime knows about."""

    def address(self, model: str, version: str) -> str:
        """The Nginx ``server`` address of that version's scoring server (``unix:/...``), or of
        each of its ready replicas, separated by spaces (``host:port host:port``)."""

    def routes_applied(self, addresses: Iterable[str]) -> None:
        """The gateway now routes to exactly ``addresses``: a runtime may stop what it replaced."""

    def version_log(self, model: str, version: str, max_bytes: int = 200_000) -> str:
        """The tail of that version's scoring server output."""
