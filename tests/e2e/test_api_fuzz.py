"""schemathesis against the real system, from the OpenAPI document the system itself serves.

Every operation of the document (aliases skipped: the unit test proves they are the same
handlers) gets schema-conforming and schema-violating requests, sent as the admin so they reach
the handlers' logic rather than stopping at the access check. Checked for each answer: no 5xx,
the status, content type, headers and body are what the document says, and a refused request
(4xx) changed nothing: the enabled models, the live tokens and the API's own events are read
from the store before and after it, and so are the serving endpoints and their grants.

It runs on the session's system and must leave every model as it was: the document's examples
name ``my-model``, which is not registered, and generated names are random (the test checks
that the served models are the same at the end). The scoring operation is fuzzed against
``bad_input_model`` (conftest.py) version 1, through the real gateway.
Every failing case is collected (no shrinking, no stop at the first) and reported at the end.
MODELSERVE_FUZZ_EXAMPLES sets the examples per operation and mode (CI: a few; see
docs/RELIABILITY.md for the long run).
"""

from __future__ import annotations

import base64
import contextlib
import os
import sqlite3
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests

from supervisor.api.openapi import ALIAS_OF, PATH
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("MODELSERVE_FUZZ_EXAMPLES", "6"))
# CI sends the same requests every run; a long run (MODELSERVE_FUZZ_EXAMPLES) draws new ones.
FIXED_SEED = "MODELSERVE_FUZZ_EXAMPLES" not in os.environ
API_EVENTS = ("Serving enabled", "Serving disabled")


def _state(system: System) -> tuple[Any, ...]:
    """What a refused request must not change, read straight from the store."""
    db_uri = f"file:{system.data_dir / 'modelserve.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(db_uri, uri=True, timeout=30)) as db:
        enabled = tuple(r[0] for r in db.execute("SELECT name FROM served_models ORDER BY name"))
        tokens = tuple(r[0] for r in db.execute("SELECT token_id FROM tokens WHERE revoked IS NULL ORDER BY 1"))
        marks = ",".join("?" * len(API_EVENTS))
        api_events = db.execute(f"SELECT count(*) FROM events WHERE message IN ({marks})", API_EVENTS).fetchone()[0]
        boxes = tuple(db.execute("SELECT * FROM model_boxes ORDER BY model"))
        endpoints = tuple(db.execute("SELECT * FROM serving_endpoints ORDER BY name"))
        grants = tuple(db.execute("SELECT * FROM endpoint_grants ORDER BY endpoint_id, user_name"))
    return enabled, tokens, api_events, boxes, endpoints, grants


def _operations(doc: dict[str, Any]) -> list[Any]:
    import schemathesis

    schema = schemathesis.openapi.from_dict(doc)
    ops = [r.ok() for r in schema.get_all_operations()]
    ops = [op for op in ops if ALIAS_OF not in doc["paths"][op.path]]
    return sorted(ops, key=lambda op: op.path != "/model/{name}/{ref}/invocations")


def _runner(system: System, doc: dict[str, Any], failures: list[str], counts: Counter[str]
            ) -> Callable[[Any], None]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]
    api_url = f"http://127.0.0.1:{system.env['MODELSERVE_API_PORT']}"
    basic = "Basic " + base64.b64encode(f"{system.admin[0]}:{system.admin[1]}".encode()).decode()
    session = system.raw

    def run(case: Any) -> None:
        internal = doc["paths"][case.operation.path].get("x-internal", False)
        before = _state(system)
        label = f"{case.operation.method.upper()} {case.operation.path}"
        try:
            response = case.call(base_url=api_url if internal else system.url, session=session,
                                 headers={"Authorization": basic}, timeout=60)
        except requests.RequestException as exc:
            failures.append(f"{label}: no answer ({type(exc).__name__}: {exc}) for {case.as_curl_command()}")
            return
        counts[f"{response.status_code // 100}xx"] += 1
        try:
            case.validate_response(response, checks=checks)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # schemathesis raises one group (a BaseException) naming every failed check
            failures.append(f"{label} -> {response.status_code}: {str(exc)[:1500]}")
        if response.status_code >= 400 and _state(system) != before:
            failures.append(f"{label} -> {response.status_code} changed the store: {case.as_curl_command()}")

    return run


def test_schemathesis_finds_no_5xx_no_schema_violation_and_no_change_from_a_refused_request(
        system: System, bad_input_model: str) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    served = system.raw.get(f"{system.url}{PATH}", timeout=30)  # the document the system serves
    assert served.status_code == 200
    doc = served.json()
    start = _state(system)
    failures: list[str] = []
    counts: Counter[str] = Counter()
    run = _runner(system, doc, failures, counts)
    operations = _operations(doc)
    for op in operations:
        fixed = {"name": bad_input_model, "ref": "1"} if "{ref}" in op.path else None
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode, path_parameters=fixed)

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=FIXED_SEED,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def fuzz(case: Any) -> None:
                run(case)

            try:
                fuzz()
            except Unsatisfiable:
                # Nothing to violate (an operation without parameters or body): no negative cases.
                assert mode == GenerationMode.NEGATIVE, op.path
    print(f"\nschemathesis: {len(operations)} operations x 2 modes x <= {EXAMPLES} examples; "
          f"answers {dict(sorted(counts.items()))}; {len(failures)} failures")
    assert not failures, "\n\n".join(failures[:20])
    enabled = _state(system)[0]
    assert enabled == start[0], "the fuzzer changed which models are served"
    assert counts["5xx"] == 0 and sum(counts.values()) >= len(operations)
