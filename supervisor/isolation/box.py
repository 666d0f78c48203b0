"""What confines one served model: its identity, its limits and whether it may use the network.

A model version is code (a pickle, a ``PythonModel``, ``code_paths``) chosen by whoever may
register a version, so every runtime starts a model's host inside a box built from this one
value. It is desired state like the version set: the plan computes it from the settings'
defaults and the served model's own settings in the store (which only MANAGE users change, never
registry tags, which EDIT users can set), and a runtime applies it. A change of the box restarts
the model's host, as a change of its versions does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1024 * 1024


@dataclass(frozen=True)
class Box:
    # The model's own system uid/gid (allocated per served model when the supervisor runs as
    # root, kept in the store); None when the supervisor is an ordinary user: the sandbox then
    # maps the supervisor's uid inside a user namespace.
    uid: int | None
    gid: int | None
    memory_bytes: int  # the model host and all its scoring servers together
    cpus: float  # cores' worth of CPU time
    pids: int  # processes and threads together
    tmp_bytes: int  # the private writable /tmp
    network: bool = False  # outbound network; off unless a MANAGE user turned it on
    # Copies of each version a replicating runtime (swarm) runs; the one-host runtimes run one.
    # Not in repr: the process runtime's key of a box (its repr) stays what it was.
    replicas: int = field(default=1, repr=False)

    def describe(self) -> str:
        net = "network on" if self.network else "no network"
        who = f"uid {self.uid}" if self.uid is not None else "a user-namespace sandbox"
        return (f"{who}, memory {self.memory_bytes // MiB} MiB, {self.cpus:g} CPU, {self.pids} processes, "
                f"tmp {self.tmp_bytes // MiB} MiB, {net}")
