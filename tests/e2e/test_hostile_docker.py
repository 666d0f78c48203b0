"""The hostile-model suite (``test_hostile.py``) on the docker runtime: the same tests, each
model in its hardened container (non-root uid, every capability dropped, no-new-privileges,
read-only root, no network, the engine's cgroup limits). A file of its own, so that its system
and the process runtime's run on two test workers side by side."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pandas as pd
import pytest

from tests.e2e import test_hostile as suite
from tests.e2e.test_docker import BASE_IMAGE
from tests.e2e.test_hostile import Hostile, hostile_system

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, iris: pd.DataFrame) -> Iterator[Hostile]:
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                          timeout=60)
    assert info.returncode == 0, f"the docker runtime needs a running Docker engine (dockerd): {info.stderr.strip()}"
    assert subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode == 0, (
        f"base image {BASE_IMAGE} is missing: run images/build-base-image.sh")
    yield from hostile_system("docker", tmp_path_factory, iris,
                              {"MODELSERVE_DOCKER_BASE_IMAGE": BASE_IMAGE, "MODELSERVE_DOCKER_DRAIN_SECONDS": "1"})


# The suite's tests in its own order (the neighbour's tally last), collected here again.
test_health_reports_every_isolation_item_enforced = suite.test_health_reports_every_isolation_item_enforced
test_probe_every_attempt_is_refused = suite.test_probe_every_attempt_is_refused
test_socket_dirs_are_each_models_own_and_closed = suite.test_socket_dirs_are_each_models_own_and_closed
test_another_local_user_cannot_score_through_a_socket = suite.test_another_local_user_cannot_score_through_a_socket
test_bomb_runs_in_cgroups_with_its_own_limits = suite.test_bomb_runs_in_cgroups_with_its_own_limits
test_memory_bomb_is_killed_and_the_kill_reported = suite.test_memory_bomb_is_killed_and_the_kill_reported
test_fork_and_thread_bombs_stop_at_the_process_limit = suite.test_fork_and_thread_bombs_stop_at_the_process_limit
test_cpu_burn_is_held_to_its_quota = suite.test_cpu_burn_is_held_to_its_quota
test_a_rewritten_status_misleads_nobody = suite.test_a_rewritten_status_misleads_nobody
test_symlinked_status_and_log_reveal_nothing = suite.test_symlinked_status_and_log_reveal_nothing
test_a_symlinked_state_dir_does_not_make_the_supervisor_touch_outside = suite.test_a_symlinked_state_dir_does_not_make_the_supervisor_touch_outside
test_a_symlinked_socket_does_not_lead_the_gateway_to_another_model = suite.test_a_symlinked_socket_does_not_lead_the_gateway_to_another_model
test_the_neighbour_answered_every_request = suite.test_the_neighbour_answered_every_request
