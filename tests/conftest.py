"""How `make test` spreads the suite over two pytest-xdist workers (``--dist loadgroup``).

Every file is one group, so a module's (and the session's) running system is started once per
worker that needs it, never once per test. The churn suite's two runtimes are two groups: each
is minutes of steady load, and they are what most needs a worker of its own.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = item.nodeid.split("::", 1)[0]
        if group.endswith("tests/e2e/test_churn.py"):
            group += "::" + ("docker" if "docker" in item.name else "process")
        item.add_marker(pytest.mark.xdist_group(group))
