"""The scoring server: request parsing (pure) and a real server process with a real model."""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from supervisor.capture.spool import SpoolRecord, read_records
from supervisor.scoring import server
from supervisor.scoring.server import ClientError, jsonable, parse_content_type, parse_request
from supervisor.scoring.spool import INLINE_HEADER, INLINE_MAX
from tests.unit.scoring.conftest import COLS, v2_request

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def test_content_type_parsing() -> None:
    assert parse_content_type("Application/JSON; format=pandas-records; charset=UTF-8") == (
        "application/json", {"format": "pandas-records", "charset": "UTF-8"})
    assert parse_content_type(None) == ("application/json", {})


@pytest.mark.parametrize(("ctype", "body", "legacy"), [
    ("application/json; format=pandas-records", b'[{"a": 1, "b": 2}]', True),
    ("application/json; format=pandas-split", b'{"columns": ["a", "b"], "data": [[1, 2]]}', True),
    ("application/json", b'[{"a": 1, "b": 2}]', True),
    ("application/json", b'{"columns": ["a", "b"], "data": [[1, 2]]}', True),
    ("application/json-numpy-split", b'{"columns": ["a", "b"], "data": [[1, 2]]}', True),
    ("application/json", b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}', False),
    ("application/json", b'{"dataframe_records": [{"b": 2, "a": 1}]}', False),
    ("application/json", b'{"instances": [{"a": 1, "b": 2}]}', False),
    ("text/csv", b"a,b\n1,2\n", False),
])
def test_every_form_gives_the_same_frame(ctype: str, body: bytes, legacy: bool) -> None:
    data, params, is_legacy, _ = parse_request(body, ctype, ["a", "b"])
    assert is_legacy is legacy and params is None
    assert isinstance(data, pd.DataFrame)
    assert data[["a", "b"]].values.tolist() == [[1, 2]]


@pytest.mark.parametrize(("ctype", "body", "status"), [
    ("application/json", b"{not json", 400),
    ("application/json", b"5", 400),
    ("application/json", b'"text"', 400),
    ("application/json", b"", 400),
    ("application/json", b"\xff\xfe\x00", 400),
    ("application/json", b'{"dataframe_split": {"data": []}, "instances": []}', 400),
    ("application/json", b'{"something": 1}', 400),
    ("application/json", b'{"dataframe_split": [1, 2]}', 400),
    ("application/json", b'{"dataframe_records": {"a": 1}}', 400),
    ("application/json", b'{"dataframe_split": {"columns": ["a"], "index": [0, 1], "data": [[1]]}}', 400),
    ("application/json", b'{"dataframe_records": [{"a": 1}], "params": [1]}', 400),
    ("application/json", b'[1, {"a": 2}]', 400),
    ("application/json; format=pandas-table", b"[]", 415),
    ("text/plain", b"x", 415),
    ("application/json; charset=latin-1", b"[]", 415),
    ("text/csv; format=pandas-split", b"a\n1", 415),
])
def test_client_mistakes_are_4xx(ctype: str, body: bytes, status: int) -> None:
    with pytest.raises(ClientError) as info:
        parse_request(body, ctype, None)
    assert info.value.status == status


def test_jsonable_handles_numpy_pandas_nan_and_dates() -> None:
    frame = pd.DataFrame({"x": [1, 2], "y": [np.nan, 0.5], "t": pd.to_datetime(["2024-01-01", "2024-01-02"])})
    assert jsonable(frame) == [{"x": 1, "y": None, "t": "2024-01-01T00:00:00"},
                               {"x": 2, "y": 0.5, "t": "2024-01-02T00:00:00"}]
    assert jsonable(np.array([[1.0, np.inf]])) == [[1.0, None]]
    assert jsonable(pd.Series([np.int64(3)])) == [3]
    assert jsonable({"a": np.float32(0.5), "b": b"hi"}) == {"a": 0.5, "b": "aGk="}


# --- a real server with a real model (the `model` fixture: conftest.py) ------------------------
def test_real_server_answers_old_and_new_forms(model: tuple[str, Any]) -> None:
    url, clf = model
    frame = pd.DataFrame(ROWS, columns=COLS)
    expected = clf.predict(frame).tolist()
    shuffled = frame[list(reversed(COLS))].to_dict(orient="records")
    r = requests.post(f"{url}/invocations", json=shuffled,
                      headers={"Content-Type": "application/json; format=pandas-records"}, timeout=10)
    assert r.status_code == 200 and r.json() == expected
    r = requests.post(f"{url}/invocations", json={"dataframe_split": frame.to_dict(orient="split")}, timeout=10)
    assert r.json() == {"predictions": expected}
    assert requests.get(f"{url}/ping", timeout=5).status_code == 200
    assert requests.get(f"{url}/version", timeout=5).text.startswith(("2.", "3."))
    assert requests.get(f"{url}/nope", timeout=5).status_code == 404


def test_schema_errors_are_400_and_the_server_survives_garbage(model: tuple[str, Any]) -> None:
    url, _ = model
    r = requests.post(f"{url}/invocations", json={"dataframe_records": [{"a": 1}]}, timeout=10)
    assert r.status_code == 400 and "error_code" in r.json()
    host, port = url.removeprefix("http://").split(":")
    for raw in (b"\x00\x01garbage\r\n\r\n", b"POST /invocations HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"da",
                b"POST /invocations HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            reply = s.recv(200)
        assert not reply or reply.startswith(b"HTTP/1.") and b" 500 " not in reply[:20]
    assert requests.get(f"{url}/ping", timeout=5).status_code == 200


def test_worker_count_auto_fits_the_machine() -> None:
    import os

    cores = len(os.sched_getaffinity(0))
    assert server.worker_count("auto") == max(1, min(2, cores))
    assert server.worker_count("3") == 3
    with pytest.raises(ValueError):
        server.worker_count("0")
    with pytest.raises(ValueError):
        server.worker_count("many")


def test_real_server_batches_concurrent_requests_each_gets_its_own_answer(model: tuple[str, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url, clf = model
    rng = np.random.default_rng(3)
    frames = [pd.DataFrame(rng.normal(size=(n, 4)), columns=COLS) for n in (1, 2, 1, 9, 1, 30, 1, 4) * 4]
    orders = [COLS, list(reversed(COLS))]

    def call(i: int) -> tuple[int, Any]:
        frame = frames[i][orders[i % 2]]
        r = requests.post(f"{url}/invocations", json={"dataframe_split": frame.to_dict(orient="split")}, timeout=30)
        return r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(call, range(len(frames))))
    for frame, (status, body) in zip(frames, answers, strict=True):
        assert status == 200 and body == {"predictions": clf.predict(frame).tolist()}


# --- the Open Inference Protocol (V2) on the same server ------------------------------------
def test_v2_infer_answers_what_invocations_answers(model: tuple[str, Any]) -> None:
    url, _ = model
    mlflow_form = requests.post(f"{url}/invocations", json={"dataframe_split": {"columns": COLS, "data": ROWS}},
                                timeout=30)
    assert mlflow_form.status_code == 200
    expected = mlflow_form.json()["predictions"]
    r = requests.post(f"{url}/v2/models/iris/versions/1/infer", json=v2_request(ROWS, id="q"), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "iris" and body["model_version"] == "1" and body["id"] == "q"
    assert body["outputs"] == [{"name": "predictions", "shape": [3], "datatype": "INT64", "data": expected}]
    # The gateway's form: /v2/<op>, the route's model and version in headers.
    r = requests.post(f"{url}/v2/infer", json=v2_request(ROWS), timeout=30,
                      headers={"X-Modelserve-Model": "my%20model", "X-Modelserve-Version": "7"})
    assert r.status_code == 200 and r.json()["model_name"] == "my model" and r.json()["model_version"] == "7"
    assert r.json()["outputs"][0]["data"] == expected


def test_v2_metadata_ready_and_errors(model: tuple[str, Any]) -> None:
    url, _ = model
    meta = requests.get(f"{url}/v2/models/iris/versions/2", timeout=30).json()
    assert meta["name"] == "iris" and meta["versions"] == ["2"] and meta["platform"] == "mlflow"
    assert meta["inputs"] == [{"name": c, "datatype": "FP64", "shape": [-1]} for c in COLS]
    ready = requests.get(f"{url}/v2/models/iris/versions/2/ready", timeout=30)
    assert ready.status_code == 200 and ready.json() == {"name": "iris", "ready": True}
    bad = requests.post(f"{url}/v2/models/iris/versions/2/infer", data=b'{"inputs": [1]}', timeout=30)
    assert bad.status_code == 400 and "inputs[0]" in bad.json()["error"] and bad.json()["error_code"] == "BAD_REQUEST"
    broken = requests.post(f"{url}/v2/models/iris/versions/2/infer", data=b"{nope", timeout=30)
    assert broken.status_code == 400 and "JSON" in broken.json()["error"]
    wrong = requests.post(f"{url}/v2/models/iris/versions/2/infer", timeout=30, json={"inputs": [
        {"name": "sepal_length", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
    assert wrong.status_code == 400 and wrong.json()["error"]
    assert requests.get(f"{url}/v2/models/iris/versions/2/infer", timeout=30).status_code == 405
    assert requests.post(f"{url}/v2/models/iris/versions/2/other", json={}, timeout=30).status_code == 404


def test_the_loaded_heap_is_frozen_out_of_the_collectors_sight() -> None:
    """A full collection over the model's heap stalled every request of a worker for 150-1,500 ms
    (the 1,000-row p99 of issue 16): after load, what is there is frozen and young collections
    are rarer."""
    import subprocess
    import sys

    code = ("import gc, sys; sys.path.insert(0, sys.argv[1]); import server; before = gc.get_freeze_count(); "
            "server.settle_heap(); print(before, gc.get_freeze_count(), gc.get_threshold()[0])")
    out = subprocess.run([sys.executable, "-c", code, str(server.Path(server.__file__).parent)],
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    before, after, young = (int(v) for v in out)
    assert before == 0 and after > 10000 and young == server.GC_YOUNG_THRESHOLD


# The capture spool lives here, beside the shared server (a file of its own could start a second
# one on another CI worker).
def test_only_requests_the_gateway_sampled_are_captured_small_on_the_answer_large_in_the_spool(
        model: tuple[str, Any], spool: Path) -> None:
    url, _ = model
    body = {"dataframe_split": pd.DataFrame(ROWS[:1], columns=COLS).to_dict(orient="split")}
    before = spool.stat().st_size if spool.exists() else 0
    sampled = "ab" * 16
    r = requests.post(f"{url}/invocations", json=body, headers={"X-Modelserve-Capture": sampled}, timeout=10)
    assert r.status_code == 200
    assert base64.b64decode(r.headers[INLINE_HEADER]) == r.content  # carried on the answer itself
    many = {"dataframe_split": pd.DataFrame(ROWS * (3000 // len(ROWS)), columns=COLS).to_dict(orient="split")}
    big = requests.post(f"{url}/invocations", json=many, headers={"X-Modelserve-Capture": "ef" * 16}, timeout=30)
    assert big.status_code == 200 and len(big.content) > INLINE_MAX and INLINE_HEADER not in big.headers
    # By the time the answer is here, the record is in the file (written before the answer left).
    assert read_records(spool, before)[0] == [SpoolRecord("ef" * 16, len(big.content), big.text)]
    after = spool.stat().st_size
    for headers in ({}, {"X-Modelserve-Capture": "short"}):  # not sampled
        plain = requests.post(f"{url}/invocations", json=body, headers=headers, timeout=10)
        assert plain.status_code == 200 and INLINE_HEADER not in plain.headers
    bad = requests.post(f"{url}/invocations", json={"nope": 1}, headers={"X-Modelserve-Capture": "cd" * 16},
                        timeout=10)
    assert bad.status_code == 400  # errors are captured too
    assert base64.b64decode(bad.headers[INLINE_HEADER]) == bad.content
    assert read_records(spool, after) == ([], after)


def test_a_server_with_allowed_peers_closes_connections_from_anyone_else() -> None:
    srv = server.Server(("127.0.0.1", 0), server.Handler)
    try:
        assert srv.verify_request(None, ("10.9.9.9", 5))  # none set: a port opened by hand takes anyone
        srv.allowed_peers = frozenset({"10.1.1.1"})
        assert srv.verify_request(None, ("10.1.1.1", 5)) and srv.verify_request(None, ("::ffff:10.1.1.1", 5, 0, 0))
        assert srv.verify_request(None, ("127.0.0.1", 5)) and srv.verify_request(None, ("::1", 5, 0, 0))  # health check
        for other in ("10.1.1.2", "172.17.0.1", "::ffff:10.1.1.2"):  # another node's task, a same-node one
            assert not srv.verify_request(None, (other, 5))
    finally:
        srv.server_close()
