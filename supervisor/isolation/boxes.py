"""The box of a served model, worked out from the settings' defaults and the store (the plan side:
nothing is applied here; a runtime applies the ``Box``).

A limit is the model's own setting when a MANAGE user set one, else the settings' default, so a
changed default reaches every model that never chose its own. The identity is a uid of its own
only when the supervisor is root (only root can run a process as another user); it is allocated
the first time the model's box is worked out and kept in the store from then on.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import replace

from supervisor.isolation.box import Box, MiB
from supervisor.settings import Settings
from supervisor.store import BoxSettings, Store


def running_as_root() -> bool:
    return os.geteuid() == 0


def default_box(settings: Settings) -> Box:
    return Box(uid=None, gid=None, memory_bytes=settings.model_memory_mb * MiB, cpus=settings.model_cpus,
               pids=settings.model_pids, tmp_bytes=settings.model_tmp_mb * MiB, network=False)


def limits_box(settings: Settings, own: BoxSettings) -> Box:
    """The box without an identity: ``own``'s settings where set, the defaults elsewhere."""
    box = default_box(settings)
    return replace(
        box,
        memory_bytes=own.memory_mb * MiB if own.memory_mb is not None else box.memory_bytes,
        cpus=own.cpus if own.cpus is not None else box.cpus,
        pids=own.max_processes if own.max_processes is not None else box.pids,
        network=own.network,
        replicas=own.replicas if own.replicas is not None else 1,
    )


def unused_by_accounts(uid: int) -> bool:
    """A uid no account of this machine has: a model given an account's uid would own its files."""
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return True
    return False


def box_for(store: Store, settings: Settings, model: str) -> Box:
    """The box ``model``'s host runs in. Raises ``UidRangeExhausted`` (as root) when the model has
    no uid yet and none is left."""
    box = limits_box(settings, store.box_settings(model))
    if not running_as_root():
        return box
    uid = store.allocate_uid(model, settings.model_uid_start, settings.model_uid_end, unused_by_accounts)
    return replace(box, uid=uid, gid=uid)
