"""Inference tables end to end (``auto_capture_config``): the session's real system, its real
Nginx writing the capture log, the real scoring servers writing their spools, the reconciler's
ingester turning both into rows of the store, and the export read back by pandas and DuckDB.

Every request carries its own ``client_request_id`` (Databricks' field in the body), so each
row can be matched with what the client sent and what it got back. Two endpoints serve the same
model version: ``cap-all`` captures every request (so "no row lost, none twice" is exact) and
``cap-half`` samples half of them (so the count is checked against binomial bounds).
"""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pytest
import requests

from supervisor.isolation import pidns
from supervisor.runtime import make_runtime
from supervisor.settings import Settings
from tests.e2e.conftest import System
from tests.e2e.test_access import _mlflow, _new_token

pytestmark = pytest.mark.e2e

MODEL = "cap-iris"
ALL, HALF = "cap-all", "cap-half"
READER = ("cap-reader", "cap-reader-pw-4k2m")
PREFIX = "/api/2.0/serving-endpoints"


@dataclass
class Sent:
    """What one client saw of one request: the status and the body it got back."""

    status: int
    body: str
    rows: list[dict[str, float]]


@dataclass
class Capture:
    system: System
    rows: list[dict[str, float]]
    sent: dict[str, dict[str, Sent]] = field(default_factory=dict)  # endpoint -> client_request_id -> Sent

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.system.token}"}

    def table(self, endpoint: str, token: str | None = None, fmt: str = "jsonl") -> requests.Response:
        return self.system.raw.get(f"{self.system.url}/api/2.0/modelserve/serving-endpoints/{endpoint}/inference-table",
                                   params={"format": fmt}, headers=self.headers(token), timeout=60)

    def captured(self, endpoint: str) -> pd.DataFrame:
        r = self.table(endpoint)
        assert r.status_code == 200, r.text[:300]
        if not r.text.strip():
            return pd.DataFrame(columns=["request_id", "client_request_id"])
        return pd.read_json(io.StringIO(r.text), lines=True, dtype=False)

    def settled(self, endpoint: str, at_least: int, timeout: float = 120.0) -> pd.DataFrame:
        """The table once the ingester (a 1 s poll) has stopped adding rows for a few polls."""
        deadline = time.monotonic() + timeout
        last, same_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            frame = self.captured(endpoint)
            if len(frame) != last:
                last, same_since = len(frame), time.monotonic()
            elif last >= at_least and time.monotonic() - same_since >= 4:
                return frame
            time.sleep(0.5)
        raise AssertionError(f"{endpoint}: the table did not settle at >= {at_least} rows within {timeout:.0f} s "
                             f"(last {last})")


class Senders:
    """``threads`` clients scoring an endpoint without pause, each request on a new connection with
    a ``client_request_id`` of its own, recording what each got. Bounded by ``max_seconds``."""

    def __init__(self, cap: Capture, endpoint: str, threads: int = 4, limit: int | None = None,
                 max_seconds: float = 300.0) -> None:
        self.cap, self.endpoint, self.limit, self.max_seconds = cap, endpoint, limit, max_seconds
        self.sent = cap.sent.setdefault(endpoint, {})
        self.errors: list[str] = []  # requests that got no HTTP answer at all
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, worker: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        url = f"{self.cap.system.url}/serving-endpoints/{self.endpoint}/invocations"
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.limit is not None and len(self.sent) + len(self.errors) >= self.limit:
                    return
            # Rows differ between requests, so a row's response can only be its own request's.
            rows = [dict(r, sepal_length=round(4.0 + (n % 40) / 10, 1)) for r in self.cap.rows]
            crid = f"w{worker}-{n}-{uuid.uuid4().hex[:8]}"
            n += 1
            try:
                with requests.Session() as s:
                    s.trust_env = False
                    r = s.post(url, json={"dataframe_records": rows, "client_request_id": crid},
                               headers=self.cap.headers(), timeout=60)
                with self._lock:
                    self.sent[crid] = Sent(r.status_code, r.text, rows)
                if r.status_code != 200:
                    time.sleep(0.1)  # a version being restarted answers 503 at once: not thousands of rows
            except requests.RequestException as exc:
                with self._lock:
                    self.errors.append(f"{crid}: {exc}")

    def count(self) -> int:
        with self._lock:
            return len(self.sent)

    def answered_since(self, n: int) -> int:
        """How many of the requests after the first ``n`` were answered 200."""
        with self._lock:
            return sum(s.status == 200 for s in list(self.sent.values())[n:])

    def wait_count(self, n: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            assert time.monotonic() < deadline, f"only {self.count()} answers within {timeout:.0f} s"
            assert any(t.is_alive() for t in self._threads), "the senders stopped"
            time.sleep(0.1)

    def __enter__(self) -> Senders:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)


def _endpoint(system: System, name: str, fraction: float) -> None:
    body = {"name": name, "config": {
        "served_entities": [{"entity_name": MODEL, "entity_version": "1", "workload_size": "Small",
                             "scale_to_zero_enabled": False}],
        "auto_capture_config": {"enabled": True, "sampling_fraction": fraction}}}
    r = system.raw.post(f"{system.url}{PREFIX}", json=body, headers={"Authorization": f"Bearer {system.token}"},
                        timeout=30)
    assert r.status_code == 200, r.text[:300]
    # Answered as the pending config until the entity is ready.
    got = r.json().get("config") or r.json()["pending_config"]
    assert got["auto_capture_config"]["sampling_fraction"] == fraction


def _ready(system: System, name: str) -> bool:
    r = system.raw.get(f"{system.url}{PREFIX}/{name}", headers={"Authorization": f"Bearer {system.token}"},
                       timeout=30)
    return r.status_code == 200 and r.json()["state"]["ready"] == "READY"


@pytest.fixture(scope="module")
def cap(system: System, register: Any, iris: pd.DataFrame) -> Capture:
    assert register(MODEL) == "1"
    _endpoint(system, ALL, 1.0)
    _endpoint(system, HALF, 0.5)
    for name in (ALL, HALF):
        system.wait_for(f"{name} READY", functools.partial(_ready, system, name), timeout=600)
    rows = iris.drop(columns=["target"]).head(3).to_dict(orient="records")
    return Capture(system, rows)


def _check_rows(cap: Capture, endpoint: str, table: pd.DataFrame) -> None:
    """Every row is a request that was sent, once, with the facts the client saw."""
    sent = cap.sent[endpoint]
    assert table["request_id"].is_unique, "a request id written twice"
    counts = Counter(table["client_request_id"])
    assert [c for c, n in counts.items() if n > 1] == [], "a request captured twice"
    unknown = set(counts) - set(sent)
    assert unknown == set(), f"rows of requests nobody sent: {sorted(unknown)[:5]}"
    for row in table.itertuples():
        s = sent[row.client_request_id]
        assert row.status_code == s.status, (row.client_request_id, row.status_code, s.status)
        assert row.endpoint == endpoint and row.served_entity == f"{MODEL}-1"
        assert json.loads(row.request)["dataframe_records"] == s.rows
        if s.status == 200:
            assert json.loads(row.response) == json.loads(s.body), row.client_request_id
            assert row.execution_time_ms >= 0 and not row.request_truncated and not row.response_truncated


def test_every_request_is_a_row_across_a_killed_ingester_and_a_killed_scoring_server(cap: Capture) -> None:
    system = cap.system
    up = json.loads((system.data_dir / "run" / "up.json").read_text())
    with Senders(cap, ALL, threads=4, max_seconds=240) as load:
        load.wait_count(60)
        # The ingester is a thread of the reconciler: SIGKILL its whole process group mid-load.
        os.killpg(up["children"]["reconciler"], signal.SIGKILL)
        load.wait_count(160)
        # Then the version's scoring server and its workers, which write the responses' spool.
        state = make_runtime(Settings(data_dir=system.data_dir)).host_state(MODEL)
        assert state is not None and state.versions["1"].pid
        server = state.versions["1"].pid
        for pid in [server, *pidns.descendants(server)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # The host starts a new server; answered requests resume (those in between may fail).
        killed_at = load.count()
        system.wait_for("200s after the kill", lambda: load.answered_since(killed_at) >= 40, timeout=240)
    assert load.errors == [], load.errors[:5]
    statuses = Counter(s.status for s in cap.sent[ALL].values())
    assert set(statuses) <= {200, 502, 503}, statuses
    table = cap.settled(ALL, at_least=len(cap.sent[ALL]))
    _check_rows(cap, ALL, table)
    missing = set(cap.sent[ALL]) - set(table["client_request_id"])
    assert missing == set(), f"{len(missing)} requests without a row, e.g. {sorted(missing)[:5]}"
    print(f"\ncapture: {len(table)} rows for {len(cap.sent[ALL])} requests, statuses {dict(statuses)}, "
          "ingester and scoring server SIGKILLed under load")


def test_half_sampled_rows_are_within_binomial_bounds(cap: Capture) -> None:
    n = 400
    with Senders(cap, HALF, threads=4, limit=n) as load:
        load.wait_count(n, timeout=300)
    assert load.errors == []
    assert all(s.status == 200 for s in cap.sent[HALF].values())
    # Binomial(400, 0.5): mean 200, standard deviation 10; five of them either side.
    table = cap.settled(HALF, at_least=150)
    assert 150 <= len(table) <= 250, len(table)
    _check_rows(cap, HALF, table)
    assert set(table["sampling_fraction"]) == {0.5}
    print(f"\ncapture: {len(table)} of {len(cap.sent[HALF])} requests sampled at 0.5")


def test_the_export_reads_back_with_pandas_and_duckdb(cap: Capture, tmp_path: Any) -> None:
    import duckdb

    system = cap.system
    expected = cap.captured(ALL).sort_values("request_id").reset_index(drop=True)
    assert len(expected) >= 300
    for fmt in ("parquet", "jsonl"):
        out = tmp_path / f"all.{fmt}"
        done = system.cli("endpoints", "inference-table", ALL, "--format", fmt, "-o", str(out))
        assert f"wrote {out}" in done.stdout
        frame = pd.read_parquet(out) if fmt == "parquet" else pd.read_json(out, lines=True, dtype=False)
        frame = frame.sort_values("request_id").reset_index(drop=True)
        assert list(frame["request_id"]) == list(expected["request_id"])
        assert list(frame["client_request_id"]) == list(expected["client_request_id"])
        assert [int(s) for s in frame["status_code"]] == [int(s) for s in expected["status_code"]]
        ok = frame[frame["status_code"] == 200]
        for row in ok.itertuples():
            assert json.loads(row.response) == json.loads(cap.sent[ALL][row.client_request_id].body)
        reader = "read_parquet" if fmt == "parquet" else "read_json_auto"
        counted = duckdb.connect().execute(f"select count(*), count(*) filter (where status_code = 200) "
                                           f"from {reader}('{out}')").fetchone()
        count, answered = counted if counted is not None else (0, 0)
        assert (count, answered) == (len(expected), len(ok))


def test_only_can_manage_reads_the_table(cap: Capture) -> None:
    system = cap.system
    _mlflow(system, "POST", "/api/2.0/mlflow/users/create", username=READER[0], password=READER[1])
    token = _new_token(system, READER)
    ep_id = system.raw.get(f"{system.url}{PREFIX}/{ALL}", headers=cap.headers(), timeout=30).json()["id"]

    def grant(level: str) -> None:
        r = system.raw.patch(f"{system.url}/api/2.0/permissions/serving-endpoints/{ep_id}",
                             json={"access_control_list": [{"user_name": READER[0], "permission_level": level}]},
                             headers=cap.headers(), timeout=30)
        assert r.status_code == 200, r.text[:300]

    grant("CAN_QUERY")
    denied = cap.table(ALL, token)
    assert denied.status_code == 403 and denied.json()["error_code"] == "PERMISSION_DENIED"
    assert cap.table(ALL, token, fmt="parquet").status_code == 403
    grant("CAN_MANAGE")
    allowed = system.wait_for("CAN_MANAGE in effect", lambda: (r := cap.table(ALL, token)).status_code == 200 and r,
                              timeout=60)
    assert len(allowed.text.splitlines()) == len(cap.captured(ALL))


def test_bad_capture_configs_get_a_clear_error_and_change_nothing(cap: Capture) -> None:
    system = cap.system
    before = system.raw.get(f"{system.url}{PREFIX}/{HALF}", headers=cap.headers(), timeout=30).json()
    entities = [{"entity_name": MODEL, "entity_version": "1"}]
    for bad in ({"enabled": True, "sampling_fraction": 0}, {"enabled": True, "sampling_fraction": 1.5},
                {"enabled": True, "sampling_fraction": -0.1}, {"enabled": True, "sampling_fraction": "half"},
                {"enabled": True, "sampling_fracton": 0.5}, {"enabled": "yes"}, ["enabled"]):
        r = system.raw.put(f"{system.url}{PREFIX}/{HALF}/config",
                           json={"served_entities": entities, "auto_capture_config": bad},
                           headers=cap.headers(), timeout=30)
        assert r.status_code == 400, (bad, r.status_code, r.text[:200])
        assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE", (bad, r.text[:200])
        assert "auto_capture_config" in r.json()["message"], r.text[:200]
    after = system.raw.get(f"{system.url}{PREFIX}/{HALF}", headers=cap.headers(), timeout=30).json()
    assert after == before
