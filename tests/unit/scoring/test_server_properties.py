"""Property tests (hypothesis) of the scoring server's request parsing, pure and over real HTTP.

Hand-picked bad requests (test_server.py) cover the mistakes we thought of; these generate the
rest: arbitrary bytes, content types (valid, charset variants, missing, garbage) and JSON of any
shape (nested, deeply nested, wrong types, huge numbers, NaN, unicode, duplicate keys, empty). The property is
the scoring server's promise: a request either parses or is refused with a 4xx and a message,
never another exception. Where both parse, the frame agrees with MLflow's own parser. The real
server variant sends the same kind of bodies to a running process and checks it never answers
5xx and stays alive. Example counts are bounded for CI; MODELSERVE_FUZZ_EXAMPLES raises them.
"""

from __future__ import annotations

import http.client
import json
import math
import os
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.scoring.server import ClientError, parse_request
from tests.unit.scoring.conftest import COLS

EXAMPLES = int(os.environ.get("MODELSERVE_FUZZ_EXAMPLES", "0")) or None
# CI runs the same examples every time; a long run (MODELSERVE_FUZZ_EXAMPLES) draws new ones.
FAST = settings(max_examples=EXAMPLES or 500, deadline=None, database=None, derandomize=EXAMPLES is None,
                suppress_health_check=list(HealthCheck))

# --- strategies ------------------------------------------------------------------------------
names = st.one_of(st.sampled_from(COLS + ["a", "b", ""]), st.text(max_size=8))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=4)), max_leaves=12)
rows = st.lists(st.lists(st.one_of(st.floats(allow_nan=False, width=32), st.integers(-1000, 1000)),
                         min_size=4, max_size=4), min_size=1, max_size=4)
records = st.lists(st.fixed_dictionaries({c: st.floats(-10, 10) for c in COLS}), min_size=1, max_size=4)
envelopes = st.one_of(
    json_values,
    st.builds(lambda v, k: {k: v}, json_values,
              st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs", "data"])),
    st.builds(lambda d, c, i: {"dataframe_split": {"data": d, **({"columns": c} if c is not None else {}),
                                                   **({"index": i} if i is not None else {})}},
              json_values, st.one_of(st.none(), json_values), st.one_of(st.none(), json_values)),
    st.builds(lambda r, p: {"dataframe_records": r, "params": p}, st.lists(json_values, max_size=3), json_values),
    st.builds(lambda r: {"dataframe_split": {"columns": COLS, "data": r}}, rows),
    st.builds(lambda r: {"dataframe_records": r}, records),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(["application/json", "text/csv", "application/json-numpy-split",
                     "application/json; format=pandas-records", "application/json; format=pandas-split",
                     "application/json; charset=utf-8", "application/json; charset=UTF8", "text/csv; charset=utf-8",
                     "application/json; charset=latin-1", "application/json; charset=", "application/json;;",
                     "application/json; format=", "APPLICATION/JSON; FORMAT=PANDAS-SPLIT", "text/plain", ""]),
    st.text(max_size=40),
)


def _json_text(value: Any, duplicate: bool) -> bytes:
    text = json.dumps(value, allow_nan=True)  # NaN/Infinity literals, as Python clients send them
    if duplicate and text.startswith("{") and len(text) > 2:
        text = '{"dataframe_records": [], ' + text[1:]  # a key given twice; the last one wins
    return text.encode()


bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(_json_text, envelopes, st.booleans()),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(lambda r: ("a,b\n" + "\n".join(",".join(map(str, x[:2])) for x in r)).encode(), rows),
    # Deep nesting: past orjson's limit (1024) and the stdlib's recursion limit.
    st.integers(1, 20_000).map(lambda n: b'{"instances": ' + b"[" * n + b"1" + b"]" * n + b"}"),
)


def _parse_or_client_error(body: bytes, content_type: str | None) -> Any:
    try:
        return parse_request(body, content_type, COLS)[0]
    except ClientError as exc:
        assert 400 <= exc.status < 500 and exc.message, (exc.status, exc.message)
        return None


# --- pure parsing -----------------------------------------------------------------------------
@FAST
@given(body=bodies, content_type=content_types)
def test_any_body_and_content_type_parses_or_is_a_clean_client_error(body: bytes, content_type: str | None) -> None:
    _parse_or_client_error(body, content_type)


@settings(FAST, max_examples=EXAMPLES or 150)
@given(value=envelopes)
def test_where_mlflow_parses_a_frame_we_parse_the_same_frame(value: Any) -> None:
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    text = json.dumps(value, allow_nan=True)
    ours = _parse_or_client_error(text.encode(), "application/json")
    if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("dataframe_split",
                                                                                  "dataframe_records")):
        return  # tensors and the 1.x forms: MLflow 3 has no parser to compare with
    try:
        theirs = infer_and_parse_data(json.loads(text))
    except Exception:
        return  # MLflow refuses it; ours may accept more (a strict superset), or refuse it too
    if ours is None and not _well_formed(value):
        return  # pandas' own leniency (an index given as a dict, ...): not a promise we make
    assert isinstance(ours, pd.DataFrame), f"MLflow parses {text[:200]} but we refuse it"
    assert list(map(str, ours.columns)) == list(map(str, theirs.columns))
    assert ours.shape == theirs.shape
    for a, b in zip(ours.to_numpy().ravel().tolist(), theirs.to_numpy().ravel().tolist(), strict=True):
        assert a == b or _both_missing(a, b) or (isinstance(a, float) and isinstance(b, (int, float))
                                                  and math.isclose(a, b)), (text[:200], a, b)


def _well_formed(value: dict[str, Any]) -> bool:
    """A frame as a client writes one: rows in a list, column names and an index as lists."""
    if "dataframe_records" in value:
        return isinstance(value["dataframe_records"], list) and all(
            isinstance(r, dict) for r in value["dataframe_records"])
    split = value["dataframe_split"]
    if not isinstance(split, dict):
        return False
    data = split.get("data")
    rows = data if isinstance(data, list) else []
    index = split.get("index", rows)
    # An index as long as the rows: pandas would repeat rows along a longer one, we refuse that.
    return (isinstance(data, (list, type(None))) and isinstance(split.get("columns", []), list)
            and isinstance(index, list) and len(index) == len(rows))


def _both_missing(a: Any, b: Any) -> bool:
    return bool(pd.isna(a) and pd.isna(b)) if np.ndim(a) == 0 and np.ndim(b) == 0 else False


# --- a real server process --------------------------------------------------------------------
def _sendable(content_type: str | None) -> bool:
    """A header value http.client can put on the wire (printable latin-1)."""
    return content_type is None or (content_type.isprintable() and content_type == content_type.strip()
                                    and all(ord(c) < 256 for c in content_type))


def _status(port: int, method: str, path: str, body: bytes, content_type: str | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": content_type} if content_type is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        if response.status >= 400:
            error = json.loads(payload)
            assert error["error_code"] and error["message"], payload[:300]
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


@settings(FAST, max_examples=EXAMPLES or 150)
@given(body=bodies, content_type=content_types.filter(_sendable))
def test_a_real_server_never_answers_5xx_to_a_client_mistake_and_stays_alive(
        model: tuple[str, Any], body: bytes, content_type: str | None) -> None:
    port = int(model[0].rsplit(":", 1)[1])
    status = _status(port, "POST", "/invocations", body, content_type)
    assert 200 <= status < 500, (status, body[:200], content_type)
    assert _status(port, "GET", "/ping", b"", None) == 200
