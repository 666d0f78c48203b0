"""The churn suite's short form (``test_churn.py``) on the docker runtime, in a file of its own so
that it and the process runtime's run on two test workers side by side."""

from __future__ import annotations

import pytest

from tests.e2e.test_churn import CHURN_TIMEOUT, churn

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(CHURN_TIMEOUT)
def test_short_churn_loses_no_request_it_should_not(tmp_path_factory: pytest.TempPathFactory) -> None:
    churn("docker", tmp_path_factory)
