"""The box of a served model, worked out from the settings' defaults and the store (the plan side:
nothing is applied here; a runtime applies the ``Box``)."""

from __future__ import annotations

from supervisor.isolation.box import Box, MiB
from supervisor.settings import Settings
from supervisor.store import Store


def default_box(settings: Settings) -> Box:
    return Box(uid=None, gid=None, memory_bytes=settings.model_memory_mb * MiB, cpus=settings.model_cpus,
               pids=settings.model_pids, tmp_bytes=settings.model_tmp_mb * MiB, network=False)


def box_for(store: Store, settings: Settings, model: str) -> Box:
    """The box ``model``'s host runs in."""
    return default_box(settings)
