"""A real Nginx asking a stand-in access check: JSON 401/403, forged headers overwritten, decisions cached."""

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

from supervisor.gateway import Gateway
from supervisor.routing import ModelRoutes, VersionRoute
from supervisor.settings import Settings
from tests.support import free_port


class Recorder(BaseHTTPRequestHandler):
    """Plays both parts: the access check (GET /internal/auth/check) and a scoring server (POST)."""

    protocol_version = "HTTP/1.1"
    checks: list[dict[str, str]] = []

    def _send(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
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
        auth, model = seen.get("Authorization", ""), seen.get("X-Modelserve-Model", "")
        if auth == "Bearer down":
            self._send(503)
        elif auth not in ("Bearer good", "Bearer other"):
            self._send(401)
        else:
            self._send(200 if (auth, model) == ("Bearer good", "my%20model") else 403)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def gateway(tmp_path: Path) -> Iterator[tuple[Gateway, int]]:
    api_port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", api_port), Recorder)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = Settings(data_dir=tmp_path, port=free_port(), api_port=api_port, mlflow_port=free_port(),
                        nginx_bin=shutil.which("nginx") or "/usr/sbin/nginx", auth_cache_seconds=4)
    gw = Gateway(settings)
    gw.start()
    routes = [ModelRoutes(name, (VersionRoute("1", "ready", ("127.0.0.1", api_port)),)) for name in ("my model", "b")]
    gw.apply_routes(routes)
    Recorder.checks = []
    yield gw, api_port
    gw.stop()
    server.shutdown()


def score(gw: Gateway, path: str, **headers: Any) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    return session.post(f"{gw.settings.gateway_url}{path}", data=b"[]", timeout=30,
                        headers={"Content-Type": "application/json", **headers})


def test_decisions_become_json_and_the_credential_stays_at_the_gate(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    ok = score(gw, "/model/my%20model/1/invocations", Authorization="Bearer good")
    assert ok.status_code == 200 and ok.json() == {"authorization": None}  # not passed to the model
    r = score(gw, "/model/b/1/invocations", Authorization="Bearer good")
    assert r.status_code == 403 and r.json()["error_code"] == "PERMISSION_DENIED"
    r = score(gw, "/model/my%20model/1/invocations")
    assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED"
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    r = score(gw, "/model/my%20model/1/invocations", Authorization="Bearer down")
    assert r.status_code == 503 and r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_the_model_comes_from_the_route_not_the_client(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    r = score(gw, "/model/b/1/invocations", Authorization="Bearer good", **{
        "X-Modelserve-Model": "my%20model", "X-Original-URI": "/model/my%20model/1/invocations"})
    assert r.status_code == 403
    check = Recorder.checks[-1]
    assert check["X-Modelserve-Model"] == "b" and check.get("X-Original-URI", "") == ""
    # Encoded and doubled slashes name the model their decoded path names.
    assert score(gw, "//model/my%20model/1/invocations", Authorization="Bearer good").status_code == 200
    assert score(gw, "/model/%62/1/invocations", Authorization="Bearer good").status_code == 403
    assert score(gw, "/model/my%20model/../b/1/invocations", Authorization="Bearer good").status_code == 403


def test_decisions_are_cached_per_credential_and_model(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    for _ in range(5):
        assert score(gw, "/model/my%20model/1/invocations", Authorization="Bearer good").status_code == 200
        assert score(gw, "/model/b/1/invocations", Authorization="Bearer good").status_code == 403
        assert score(gw, "/model/b/1/invocations", Authorization="Bearer other").status_code == 403
    assert len(Recorder.checks) == 3  # one per (credential, model) while the decision is cached
    # An unavailable check is not cached.
    for _ in range(2):
        assert score(gw, "/model/b/1/invocations", Authorization="Bearer down").status_code == 503
    assert len(Recorder.checks) == 5



def test_an_expired_decision_is_asked_again(gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    assert score(gw, "/model/my%20model/1/invocations", Authorization="Bearer good").status_code == 200
    # Nginx keeps a decision for half of MODELSERVE_AUTH_CACHE_SECONDS (2 of 4 s here), counted in
    # whole seconds: a revoked token cannot outlive that.
    time.sleep(3.2)
    assert score(gw, "/model/my%20model/1/invocations", Authorization="Bearer good").status_code == 200
    assert len(Recorder.checks) == 2
