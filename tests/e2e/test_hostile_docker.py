"""The hostile-model suite (``test_hostile.py``) on the docker runtime: the same tests, each
model in its hardened container (non-root uid, every capability dropped, no-new-privileges,
read-only root, no network, the engine's cgroup limits). A file of its own, so that its system
and the process runtime's run on two test workers side by side."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest

from tests.e2e import test_hostile as suite
from tests.e2e.test_docker import BASE_IMAGE, require_engine
from tests.e2e.test_hostile import Hostile, hostile_system

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, iris: pd.DataFrame) -> Iterator[Hostile]:
    require_engine()
    yield from hostile_system("docker", tmp_path_factory, iris,
                              {"MODELSERVE_DOCKER_BASE_IMAGE": BASE_IMAGE, "MODELSERVE_DOCKER_DRAIN_SECONDS": "1"})


# Every test of the suite, in its own order (the neighbour's tally last), collected here again: a
# test added there runs on this runtime too.
globals().update({name: test for name, test in vars(suite).items() if name.startswith("test_")})
