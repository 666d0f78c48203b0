"""A real Nginx enforcing serving endpoints' rate limits, keyed by the principal a stand-in access
check names (as the real one does, in ``X-Modelserve-User``), with that check's answers cached."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from supervisor.api.auth import decision_cache_control
from supervisor.endpoints.ratelimits import limit_zones
from supervisor.gateway import Gateway
from supervisor.routing import EndpointRoutes, EntityRoute, ModelRoutes, VersionRoute
from supervisor.settings import Settings
from tests.support import free_port

USERS = {"Bearer alice": "alice", "Bearer bob": "bob", "Bearer carol": "carol"}


class CheckAndScore(BaseHTTPRequestHandler):
    """The access check (any known token, answered with its user) and a scoring server."""

    protocol_version = "HTTP/1.1"
    settings = Settings()

    def do_POST(self) -> None:  # noqa: N802
        if self.path.startswith("/internal/auth/check"):
            user = USERS.get(self.headers.get("Authorization", ""))
            self.send_response(200 if user else 401)
            self.send_header("Cache-Control", decision_cache_control(200 if user else 401, CheckAndScore.settings))
            if user:
                self.send_header("X-Modelserve-User", user)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"predictions": [0]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    api_port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", api_port), CheckAndScore)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = Settings(data_dir=tmp_path, port=free_port(), api_port=api_port, mlflow_port=free_port(),
                        nginx_bin=shutil.which("nginx") or "/usr/sbin/nginx", auth_cache_seconds=4)
    CheckAndScore.settings = settings
    gw = Gateway(settings)
    gw.start()
    yield gw
    gw.stop()
    server.shutdown()


def limit(gw: Gateway, limits: dict[str, list[dict[str, Any]]]) -> None:
    """Endpoints "a" and "b", one entity each on the stand-in, with ``limits``."""
    api = f"127.0.0.1:{gw.settings.api_port}"
    models = [ModelRoutes("m", (VersionRoute("1", "ready", api),), legacy=False)]
    endpoints = [EndpointRoutes(name, (EntityRoute("m-1", ("m", "1"), 100),)) for name in ("a", "b")]
    gw.apply_routes(models, endpoints, limit_zones(limits))


def burst(gw: Gateway, endpoint: str, token: str, n: int) -> list[requests.Response]:
    with requests.Session() as session:  # closed after: Nginx's graceful stop waits for idle keep-alives
        session.trust_env = False
        return [session.post(f"{gw.settings.gateway_url}/serving-endpoints/{endpoint}/invocations",
                             json={"inputs": [1]}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
                for _ in range(n)]


def codes(responses: list[requests.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


def test_a_user_over_the_limit_gets_json_429s_while_another_user_scores_and_the_bucket_refills(
        gateway: Gateway) -> None:
    limit(gateway, {"a": [{"calls": 30, "key": "user", "renewal_period": "minute"}]})
    started = time.monotonic()
    alice = burst(gateway, "a", "alice", 36)
    elapsed = time.monotonic() - started
    got = codes(alice)
    # 30 at once, then one more per 2 s of the burst's own duration.
    assert set(got) == {200, 429} and 30 <= got[200] <= 30 + int(elapsed / 2) + 1, (got, elapsed)
    refused = next(r for r in alice if r.status_code == 429)
    assert refused.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert refused.headers["Retry-After"] == "2" and refused.headers["Content-Type"] == "application/json"
    # Bob has a bucket of his own, in the same second; endpoint b has no limit at all.
    assert codes(burst(gateway, "a", "bob", 5)) == {200: 5}
    assert codes(burst(gateway, "b", "alice", 5)) == {200: 5}
    time.sleep(int(refused.headers["Retry-After"]) + 0.5)
    again = burst(gateway, "a", "alice", 1)[0]
    assert again.status_code == 200 and again.headers["served-model-name"] == "m-1"


def test_an_endpoint_limit_counts_everyone_and_a_users_own_limit_replaces_the_default(gateway: Gateway) -> None:
    limit(gateway, {"a": [{"calls": 4, "key": "endpoint", "renewal_period": "minute"}],
                    "b": [{"calls": 2, "key": "user", "renewal_period": "minute"},
                          {"calls": 6, "key": "user", "principal": "carol", "renewal_period": "minute"}]})
    assert codes(burst(gateway, "a", "alice", 3)) == {200: 3}
    bob = burst(gateway, "a", "bob", 3)
    assert codes(bob) == {200: 1, 429: 2} and bob[-1].headers["Retry-After"] == "15"
    assert codes(burst(gateway, "b", "alice", 4)) == {200: 2, 429: 2}
    assert codes(burst(gateway, "b", "carol", 8)) == {200: 6, 429: 2}
    # Without credentials the access check answers first (401), and nothing is counted.
    assert codes(burst(gateway, "b", "nobody", 3)) == {401: 3}


def test_limits_removed_or_changed_take_effect_and_survive_a_restart_of_nginx(gateway: Gateway) -> None:
    limit(gateway, {"a": [{"calls": 1, "key": "endpoint", "renewal_period": "minute"}]})
    assert codes(burst(gateway, "a", "alice", 2)) == {200: 1, 429: 1}
    # The launcher's restart of Nginx renders the main config again: with the same limits.
    gateway.stop()
    gateway.start()
    assert codes(burst(gateway, "a", "bob", 2)) == {200: 1, 429: 1}
    limit(gateway, {"a": [{"calls": 3, "key": "endpoint", "renewal_period": "minute"}]})  # a fresh bucket
    assert codes(burst(gateway, "a", "alice", 4)) == {200: 3, 429: 1}
    limit(gateway, {})
    assert codes(burst(gateway, "a", "alice", 5)) == {200: 5}


def test_without_access_control_an_endpoint_limit_still_counts_and_a_per_user_one_counts_nobody(
        tmp_path: Path) -> None:
    api_port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", api_port), CheckAndScore)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    gw = Gateway(Settings(data_dir=tmp_path, port=free_port(), api_port=api_port, mlflow_port=free_port(),
                          nginx_bin=shutil.which("nginx") or "/usr/sbin/nginx", auth=False))
    gw.start()
    try:
        limit(gw, {"a": [{"calls": 2, "key": "endpoint"}], "b": [{"calls": 1, "key": "user"}]})
        assert codes(burst(gw, "a", "anyone", 3)) == {200: 2, 429: 1}
        assert codes(burst(gw, "b", "anyone", 3)) == {200: 3}
    finally:
        gw.stop()
        server.shutdown()
