"""The churn-and-fault suite's short form (issue 7) on every runtime: a real system under steady
load from a second process while versions are registered, moved, archived, builds fail, the
gateway reloads, supervisor processes, scoring servers and model hosts are killed and the registry
freezes. ``tests/reliability/churn.py`` runs it and judges it; this test only demands a clean
verdict, and prints the per-phase table (visible with ``-s`` or on failure).

Each runtime gets a system of its own (the suite kills and restarts its parts) and a file of its
own (``test_churn_docker.py`` runs this test on the docker runtime), so that the two, each several
minutes long, run on two test workers side by side. The docker one reuses the environment image
the docker tests built, so it costs container starts, not builds.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.reliability.churn import run

pytestmark = pytest.mark.e2e

# Alone the short form takes 5-8 minutes; beside other work on two cores it ran past the suite's
# 15-minute default while every phase still passed, so it gets more room (a bound, not a speed rule).
CHURN_TIMEOUT = 1800


# No rule of the suite depends on the machine's speed (recoveries are measured and shown, and only
# have to come back), so both runtimes run beside the other test files.
@pytest.mark.timeout(CHURN_TIMEOUT)
def test_short_churn_loses_no_request_it_should_not(tmp_path_factory: pytest.TempPathFactory) -> None:
    churn("process", tmp_path_factory)


def churn(runtime: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    if runtime == "docker":
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
        assert info.returncode == 0, f"the docker runtime needs a running Docker engine: {info.stderr.strip()}"
    result = run(runtime, "short", tmp_path_factory.mktemp(f"churn-{runtime}"))
    print(result.report())
    assert not result.problems, result.report()
    assert len(result.records) > 500  # the load really ran through every phase
