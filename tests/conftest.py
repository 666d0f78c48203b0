"""The order in which the test files reach CI's two pytest workers.

pytest-xdist's ``--dist loadfile`` hands each worker whole files in the collection's order, and by
default first sorts them by how many tests they hold. That put the longest files last: a whole
system under churn, the hostile suites or the pages are one to a dozen tests each but minutes
long, and one worker ran the last of them alone while the other sat idle. The Makefile turns that
sorting off (``--no-loadscope-reorder``) and this hook starts the longest files first
(longest-processing-time-first, the classic rule for two machines), so the tail is short files.

The figures are rough seconds per file on the shared 2-core machine (the churn ones from
docs/RELIABILITY.md's runs, the rest estimated; CI prints the 40 longest tests every run, and
the 2026-12-04 run kept this order at the top). They only order the files, never limit a test:
a file missing here, or slower than written, just starts later. A file's own tests keep their
order.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SECONDS = {
    # Its images build first (about 5 minutes on an engine that has none of their layers).
    "e2e/test_compose.py": 600,
    "e2e/test_churn_docker.py": 480,
    "e2e/test_churn.py": 480,
    "e2e/test_hostile_docker.py": 300,
    "e2e/test_hostile.py": 300,
    "e2e/test_docker.py": 280,
    # A three-node swarm with a registry (about 3 s), then a whole system: 403-453 s (RELIABILITY.md).
    "e2e/test_swarm.py": 430,
    # The stack on a three-node swarm: 253 s with the images already built (it waits for
    # test_compose.py's build, which it shares, when that one runs at the same time).
    "e2e/test_stack.py": 320,
    "e2e/test_endpoints.py": 380,
    "e2e/test_capture.py": 200,
    "e2e/test_access.py": 200,
    "e2e/test_recovery.py": 200,
    "e2e/test_whole_restart.py": 360,
    "e2e/test_registry_outage.py": 180,
    "e2e/test_pages.py": 150,
    "e2e/test_build_faults.py": 150,
    "e2e/test_serving.py": 120,
    "e2e/test_errors.py": 100,
    "e2e/test_api_fuzz.py": 100,
    "e2e/test_gateway_limits.py": 80,
    "unit/scoring/test_generations.py": 200,
    "unit/scoring/test_server_properties.py": 190,
}
# An end-to-end file starts a whole system: unnamed ones still go before the unit tests.
E2E_DEFAULT = 90
TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def weight(item: pytest.Item) -> int:
        path = Path(str(item.fspath)).relative_to(TESTS).as_posix()
        return SECONDS.get(path, E2E_DEFAULT if path.startswith("e2e/") else 0)

    items.sort(key=weight, reverse=True)  # stable: a file's tests keep their order
