"""A real Nginx asking a stand-in access check: 401 before anything, a model one may not read answered as
one that does not exist, forged headers overwritten, decisions cached.

The stand-in sends the ``Cache-Control`` the real check sends (``decision_cache_control``), so
the freshness, background refresh and stale-if-error bounds tested here are the shipped ones.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from supervisor.api.auth import decision_cache_control
from supervisor.gateway import Gateway, nginx_cache_seconds
from supervisor.routing import ModelRoutes, VersionRoute
from supervisor.settings import Settings
from tests.support import free_port


class Recorder(BaseHTTPRequestHandler):
    """Plays both parts: the access check (GET /internal/auth/check) and a scoring server (POST)."""

    protocol_version = "HTTP/1.1"
    checks: list[dict[str, str]] = []
    settings = Settings()
    outage = ""  # "503": the check answers 503 to everyone; "drop": it closes without answering
    # Cleared: every check waits until it is set again (MLflow's slow password hash, as slow as
    # the test likes), so an answer that comes meanwhile cannot have come from the check.
    answering = threading.Event()
    verdict = 0  # when set, the status every check answers (e.g. 401 once a token is revoked)

    def _send(self, status: int, body: bytes = b"", cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if cache:
            self.send_header("Cache-Control", decision_cache_control(status, Recorder.settings))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._check()

    def do_POST(self) -> None:  # noqa: N802
        if self.path.startswith("/internal/auth/check"):
            self._check()
            return
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(200, json.dumps({"authorization": self.headers.get("Authorization")}).encode())

    def _check(self) -> None:
        seen = {k: v for k, v in self.headers.items()}
        Recorder.checks.append(seen)
        Recorder.answering.wait(timeout=120)
        auth, model = seen.get("Authorization", ""), seen.get("X-Modelserve-Model", "")
        if Recorder.outage == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
        elif Recorder.verdict:
            self._send(Recorder.verdict, cache=True)
        elif auth == "Bearer down" or Recorder.outage == "503":
            self._send(503, cache=True)
        elif auth not in ("Bearer good", "Bearer other"):
            self._send(401, cache=True)
        else:  # as the real check: a path with no route (no model) needs only a valid credential
            self._send(200 if model == "" or (auth, model) == ("Bearer good", "my%20model") else 403, cache=True)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def gateway(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Gateway, int]]:
    """Nginx with a 4 s decision cache (2 s fresh in Nginx) unless a test marks ``cache_seconds``;
    a test may mark ``stale_seconds``."""
    marker = request.node.get_closest_marker("stale_seconds")
    cache = request.node.get_closest_marker("cache_seconds")
    api_port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", api_port), Recorder)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = Settings(data_dir=tmp_path, port=free_port(), api_port=api_port, mlflow_port=free_port(),
                        nginx_bin=shutil.which("nginx") or "/usr/sbin/nginx",
                        auth_cache_seconds=cache.args[0] if cache else 4,
                        auth_stale_seconds=marker.args[0] if marker else 300)
    Recorder.settings, Recorder.outage, Recorder.verdict = settings, "", 0
    Recorder.answering.set()
    gw = Gateway(settings)
    gw.start()
    routes = [ModelRoutes(name, (VersionRoute("1", "ready", f"127.0.0.1:{api_port}"), VersionRoute("2", "pending", None)),
                          (("Production", "1"),), (("champion", "2"),)) for name in ("my model", "b")]
    gw.apply_routes(routes)
    Recorder.checks = []
    yield gw, api_port
    Recorder.answering.set()  # a check still held would keep Nginx's graceful stop waiting
    gw.stop()
    server.shutdown()


def client() -> requests.Session:
    """A session that sends exactly the headers given (no netrc)."""
    session = requests.Session()
    session.trust_env = False
    return session


def score(gw: Gateway, path: str, **headers: Any) -> requests.Response:
    return client().post(f"{gw.settings.gateway_url}{path}", data=b"[]", timeout=30,
                        headers={"Content-Type": "application/json", **headers})


def test_decisions_become_json_and_the_credential_stays_at_the_gate(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    ok = score(gw, "/model/my%20model/1/invocations", Authorization="Bearer good")
    assert ok.status_code == 200 and ok.json() == {"authorization": None}  # not passed to the model
    r = score(gw, "/model/b/1/invocations", Authorization="Bearer good")
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    r = score(gw, "/model/my%20model/1/invocations")
    assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED"
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    r = score(gw, "/model/my%20model/1/invocations", Authorization="Bearer down")
    assert r.status_code == 503 and r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_the_model_comes_from_the_route_not_the_client(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    r = score(gw, "/model/b/1/invocations", Authorization="Bearer good", **{
        "X-Modelserve-Model": "my%20model", "X-Original-URI": "/model/my%20model/1/invocations"})
    assert r.status_code == 404
    check = Recorder.checks[-1]
    assert check["X-Modelserve-Model"] == "b" and check.get("X-Original-URI", "") == ""
    # Encoded and doubled slashes name the model their decoded path names.
    assert score(gw, "//model/my%20model/1/invocations", Authorization="Bearer good").status_code == 200
    assert score(gw, "/model/%62/1/invocations", Authorization="Bearer good").status_code == 404
    assert score(gw, "/model/my%20model/../b/1/invocations", Authorization="Bearer good").status_code == 404


# Fresh for a minute: fifteen requests on a loaded machine must not outlast a decision, whose
# refresh would be one more check than counted here.
@pytest.mark.cache_seconds(120)
def test_decisions_are_cached_per_credential_and_model(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    for _ in range(5):
        assert score(gw, "/model/my%20model/1/invocations", Authorization="Bearer good").status_code == 200
        assert score(gw, "/model/b/1/invocations", Authorization="Bearer good").status_code == 404
        assert score(gw, "/model/b/1/invocations", Authorization="Bearer other").status_code == 404
    assert len(Recorder.checks) == 3  # one per (credential, model) while the decision is cached
    # An unavailable check is not cached.
    for _ in range(2):
        assert score(gw, "/model/b/1/invocations", Authorization="Bearer down").status_code == 503
    assert len(Recorder.checks) == 5



def answer(r: requests.Response) -> tuple[int, bytes, dict[str, str]]:
    """What a client can tell apart: status, body bytes and headers (but the clock's Date)."""
    return r.status_code, r.content, {k.lower(): v for k, v in r.headers.items() if k.lower() != "date"}


# Paths with no route, one whose version is still being deployed (stage and alias of it too),
# and a ready version's: without valid credentials they must all answer the same 401.
NO_ROUTE = ("/model/nothing/1/invocations", "/model/my%20model/9/invocations", "/model/my%20model/1/ping",
            "/model/", "/model/x", "/model/%ff/x", "/model/my%20model/1/invocations/../../../b")
PENDING = ("/model/my%20model/2/invocations", "/model/my%20model/@champion/invocations")


def test_without_valid_credentials_every_model_path_is_401_first(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    first = None
    for path in (*NO_ROUTE, *PENDING, GOOD[0], "/model/my%20model/Production/invocations"):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = score(gw, path, **headers)
            assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED", (path, headers, r.text)
            assert r.headers["WWW-Authenticate"].startswith("Basic")
            first = first or answer(r)
            assert answer(r) == first, path
    # Other methods too: nothing is answered before the check.
    session = client()
    for method in ("GET", "PUT", "DELETE", "HEAD"):
        for path in (NO_ROUTE[0], PENDING[0]):
            assert session.request(method, f"{gw.settings.gateway_url}{path}", timeout=30).status_code == 401


def test_a_model_one_may_not_read_answers_exactly_like_no_model(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    nothing = answer(score(gw, "/model/nothing/1/invocations", Authorization="Bearer good"))
    assert nothing[0] == 404 and json.loads(nothing[1])["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert nothing[2]["content-type"] == "application/json" and "retry-after" not in nothing[2]
    for path in NO_ROUTE:
        assert answer(score(gw, path, Authorization="Bearer good")) == nothing, path
    # "b" is served (v1 ready, v2 pending, a stage and an alias): for a caller without READ every
    # path of it is the answer above, byte for byte.
    for path in ("/model/b/1/invocations", "/model/b/2/invocations", "/model/b/Production/invocations",
                 "/model/b/@champion/invocations", "/model/b/9/invocations"):
        assert answer(score(gw, path, Authorization="Bearer good")) == nothing, path
    # A reader of the model gets the truth: pending is a 503 with Retry-After.
    for path in PENDING:
        r = score(gw, path, Authorization="Bearer good")
        assert r.status_code == 503 and r.headers["Retry-After"] == "5", path
        assert r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert score(gw, "/model/my%20model/Production/invocations", Authorization="Bearer good").status_code == 200
    # The gateway's own answers hold for every method and for the largest body it accepts.
    session = client()
    for method in ("GET", "PUT", "DELETE"):
        r = session.request(method, f"{gw.settings.gateway_url}/model/nothing/1/invocations", timeout=30,
                            headers={"Authorization": "Bearer good"})
        assert r.status_code == 404 and r.content == nothing[1], method
    big = session.post(f"{gw.settings.gateway_url}/model/nothing/1/invocations", data=b"x" * (16 * 1024 * 1024 - 10),
                       headers={"Authorization": "Bearer good"}, timeout=60)
    assert answer(big) == nothing


@pytest.mark.cache_seconds(120)
def test_paths_with_no_route_share_one_decision_per_credential(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    for path in NO_ROUTE:
        assert score(gw, path, Authorization="Bearer good").status_code == 404
        assert score(gw, path, Authorization="Bearer wrong").status_code == 401
    assert len(Recorder.checks) == 2 and {c.get("X-Modelserve-Model", "") for c in Recorder.checks} == {""}
    # A model's decision is its own: the credential's "no route" decision does not stand in for it.
    assert score(gw, "/model/b/1/invocations", Authorization="Bearer good").status_code == 404
    assert len(Recorder.checks) == 3 and Recorder.checks[-1]["X-Modelserve-Model"] == "b"


def wait_for_checks(n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(Recorder.checks) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(Recorder.checks) == n


GOOD = ("/model/my%20model/1/invocations", "Bearer good")


def past_fresh(gw: Gateway) -> float:
    """Seconds after a decision was cached by which it is surely no longer fresh: as early as
    that can be in the refresh window that follows (as long again)."""
    # Nginx keeps a decision fresh for half of MODELSERVE_AUTH_CACHE_SECONDS, counted in whole
    # seconds: up to one more. The first request after that starts a refresh.
    return nginx_cache_seconds(gw.settings.auth_cache_seconds) + 1.2


def test_an_expired_decision_is_asked_again(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    assert score(gw, GOOD[0], Authorization=GOOD[1]).status_code == 200
    time.sleep(past_fresh(gw))
    assert score(gw, GOOD[0], Authorization=GOOD[1]).status_code == 200
    wait_for_checks(2)


# 6 s fresh, then 6 s of refresh window, which the requests below must land in: with 2 s of each
# a loaded machine had under a second to get there.
@pytest.mark.cache_seconds(12)
def test_an_expired_decision_is_refreshed_behind_the_callers_back(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    assert score(gw, GOOD[0], Authorization=GOOD[1]).status_code == 200
    time.sleep(past_fresh(gw))
    Recorder.answering.clear()
    try:  # answered while the check is held: from the old decision, not after the check
        assert score(gw, GOOD[0], Authorization=GOOD[1]).status_code == 200
        wait_for_checks(2)
    finally:
        Recorder.answering.set()


@pytest.mark.cache_seconds(12)  # the refresh window, as above
def test_a_revocation_takes_effect_at_the_next_refresh(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    assert score(gw, GOOD[0], Authorization=GOOD[1]).status_code == 200
    time.sleep(past_fresh(gw))
    Recorder.verdict = 401  # the token was revoked
    score(gw, GOOD[0], Authorization=GOOD[1])  # may pass once more: it starts the refresh
    wait_for_checks(2)
    # The refresh's answer reaches Nginx's cache a moment after the check was asked (how long a
    # moment depends on the machine): until then the old decision serves, without a new check.
    deadline = time.monotonic() + 60
    while (status := score(gw, GOOD[0], Authorization=GOOD[1]).status_code) != 401 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 401
    assert len(Recorder.checks) == 2  # the refresh itself brought the revocation, not a later check


def test_known_callers_keep_scoring_while_the_check_is_unreachable(gateway: tuple[Gateway, int]) -> None:
    """The API restarting: Nginx keeps its decisions (stale-if-error), new callers wait outside."""
    gw, _ = gateway
    assert score(gw, GOOD[0], Authorization=GOOD[1]).status_code == 200
    assert score(gw, "/model/b/1/invocations", Authorization="Bearer good").status_code == 404
    Recorder.outage = "drop"
    # Fresh, in the refresh window, and past it (2 s fresh + 2 s stale-while-revalidate).
    for wait in (0.0, 2.5, 2.5):
        time.sleep(wait)
        assert score(gw, GOOD[0], Authorization=GOOD[1]).status_code == 200, f"after {wait} s"
        assert score(gw, "/model/b/1/invocations", Authorization="Bearer good").status_code == 404
    r = score(gw, GOOD[0], Authorization="Bearer other")
    assert r.status_code == 503 and r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    Recorder.outage = ""
    assert score(gw, GOOD[0], Authorization="Bearer other").status_code == 404


def test_a_check_that_cannot_decide_is_not_overruled(gateway: tuple[Gateway, int]) -> None:
    """A 503 from the check means its own grace for this caller is over (supervisor/auth):
    Nginx does not stretch an old decision past its refresh window."""
    gw, _ = gateway
    assert score(gw, GOOD[0], Authorization=GOOD[1]).status_code == 200
    Recorder.outage = "503"
    time.sleep(2.0 + 2.0 + 1.5)
    r = score(gw, GOOD[0], Authorization=GOOD[1])
    assert r.status_code == 503 and r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


@pytest.mark.stale_seconds(1)
def test_old_decisions_stop_serving_after_the_stale_bound(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    assert score(gw, GOOD[0], Authorization=GOOD[1]).status_code == 200
    Recorder.outage = "drop"
    time.sleep(2.0 + 2.0 + 1.0 + 1.5)  # fresh, stale-while-revalidate, stale-if-error, whole seconds
    assert score(gw, GOOD[0], Authorization=GOOD[1]).status_code == 503
