"""The real scoring server writes a sampled request's response to its spool before answering, and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import requests

from supervisor.capture.spool import SpoolRecord, read_records
from tests.unit.scoring.conftest import COLS

ROWS = [[5.1, 3.5, 1.4, 0.2]]


def test_only_requests_the_gateway_sampled_are_spooled(model: tuple[str, Any], spool: Path) -> None:
    url, _ = model
    body = {"dataframe_split": pd.DataFrame(ROWS, columns=COLS).to_dict(orient="split")}
    before = spool.stat().st_size if spool.exists() else 0
    sampled = "ab" * 16
    r = requests.post(f"{url}/invocations", json=body, headers={"X-Modelserve-Capture": sampled}, timeout=10)
    assert r.status_code == 200
    # By the time the answer is here, the record is in the file (written before the answer left).
    assert read_records(spool, before)[0] == [SpoolRecord(sampled, len(r.content), r.text)]
    after = spool.stat().st_size
    requests.post(f"{url}/invocations", json=body, timeout=10)  # not sampled
    requests.post(f"{url}/invocations", json=body, headers={"X-Modelserve-Capture": "short"}, timeout=10)
    bad = requests.post(f"{url}/invocations", json={"nope": 1}, headers={"X-Modelserve-Capture": "cd" * 16},
                        timeout=10)
    assert bad.status_code == 400
    records, _ = read_records(spool, after)
    assert [(x.request_id, x.body) for x in records] == [("cd" * 16, bad.text)]  # errors are captured too
