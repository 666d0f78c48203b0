"""A real Nginx with the gateway's configs: routes, JSON errors, atomic swap, reloads that lose nothing."""

from __future__ import annotations

import json
import shutil
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import requests

from supervisor.gateway import Gateway, GatewayConfigError
from supervisor.routing import ModelRoutes, VersionRoute
from supervisor.settings import Settings
from tests.support import free_port


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.reply(json.dumps({"path": self.path, "port": Path(self.server.server_address).stem}).encode())

    def reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class UnixEcho(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture()
def backends(tmp_path: Path) -> Iterator[list[str]]:
    """Two scoring-server stand-ins on Unix sockets, as the runtimes run them; each answers with its
    socket's name (backend0, backend1)."""
    servers = [UnixEcho(str(tmp_path / f"backend{i}.sock"), Echo) for i in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield [str(s.server_address) for s in servers]
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture()
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    # Routing only; the access check in front of it is tested in tests/unit/test_gateway_auth.py.
    settings = Settings(data_dir=tmp_path, port=free_port(), api_port=free_port(), mlflow_port=free_port(),
                        nginx_bin=shutil.which("nginx") or "/usr/sbin/nginx", auth=False)
    gw = Gateway(settings)
    gw.start()
    yield gw
    gw.stop()


def table(backends: list[str], name: str = "my model", extra_pending: bool = False) -> list[ModelRoutes]:
    versions = [VersionRoute("1", "ready", f"unix:{backends[0]}"), VersionRoute("2", "ready", f"unix:{backends[1]}")]
    if extra_pending:
        versions.append(VersionRoute("3", "pending", None))
    return [ModelRoutes(name, tuple(versions), (("Production", "2"),), (("champion", "1"),))]


def post(gw: Gateway, path: str, data: bytes = b"[]") -> requests.Response:
    return requests.post(f"{gw.settings.gateway_url}{path}", data=data,
                         headers={"Content-Type": "application/json"}, timeout=30)


def test_routes_and_json_errors(gateway: Gateway, backends: list[str]) -> None:
    assert gateway.apply_routes(table(backends, extra_pending=True)).changed
    r = post(gateway, "/model/my%20model/1/invocations")
    assert r.status_code == 200 and r.json() == {"path": "/invocations", "port": "backend0"}
    assert post(gateway, "/model/my%20model/Production/invocations").json()["port"] == "backend1"
    assert post(gateway, "/model/my%20model/production/invocations").json()["port"] == "backend1"
    assert post(gateway, "/model/my%20model/@champion/invocations").json()["port"] == "backend0"
    r = post(gateway, "/model/my%20model/3/invocations")
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    for path in ("/model/other/1/invocations", "/model/my%20model/9/invocations", "/model/my%20model/1/ping",
                 "/model/my%20model//1/invocations/../../x"):
        r = post(gateway, path)
        assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST", path
    r = post(gateway, "/model/my%20model/1/invocations", data=b"x" * (17 * 1024 * 1024))
    assert r.status_code == 413 and r.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"


def test_identical_routes_do_not_reload(gateway: Gateway, backends: list[str]) -> None:
    assert gateway.apply_routes(table(backends)).changed
    before = gateway.routes_conf.stat().st_mtime_ns
    assert not gateway.apply_routes(table(backends)).changed
    assert gateway.routes_conf.stat().st_mtime_ns == before


def test_refused_config_keeps_the_old_routes(gateway: Gateway, backends: list[str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    gateway.apply_routes(table(backends))
    broken = tmp_path / "broken-templates"
    broken.mkdir()
    shutil.copy(gateway.settings.nginx_templates / "nginx.conf.j2", broken)
    (broken / "routes.conf.j2").write_text("this is not nginx;\n")
    monkeypatch.setattr(gateway.settings, "nginx_templates", broken)
    with pytest.raises(GatewayConfigError, match="nginx -t"):
        gateway.apply_routes(table(backends, name="other"))
    assert post(gateway, "/model/my%20model/1/invocations").status_code == 200


def test_reloads_lose_no_request(gateway: Gateway, backends: list[str]) -> None:
    """Clients as the seed's snippets are (a new connection per request) lose nothing to reloads.

    A client that keeps a connection open can meet HTTP/1.1's keep-alive race when the old
    worker closes its idle connections; see docs/DESIGN.md."""
    gateway.apply_routes(table(backends))
    results: list[str] = []
    stop = threading.Event()

    def load() -> None:
        for _ in range(3000):
            if stop.is_set():
                return
            try:
                r = requests.post(f"{gateway.settings.gateway_url}/model/my%20model/1/invocations", data=b"[]",
                                  headers={"Content-Type": "application/json"}, timeout=30)
                results.append(str(r.status_code))
            except requests.RequestException as exc:
                results.append(type(exc).__name__)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    # At least 8 reloads and 50 answers, both: how many answers fit in 8 reloads depends on the
    # machine. Each table names a new model, so each is a change Nginx must load.
    deadline = time.monotonic() + 300
    i = 0
    while (i < 8 or len(results) <= 50) and time.monotonic() < deadline:
        gateway.apply_routes(table(backends, name="my model") + table(backends, name=f"churn {i}"))
        i += 1
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert len(results) > 50
    assert set(results) == {"200"}, {c: results.count(c) for c in set(results)}


def test_a_socket_left_by_a_killed_nginx_does_not_stop_a_start(gateway: Gateway, backends: list[int]) -> None:
    """The gateway's own 404/503 come from a Unix socket in its prefix (nginx.conf.j2)."""
    import os
    import signal

    gateway.apply_routes(table(backends, extra_pending=True))
    master = gateway.pid()
    assert master is not None and gateway.gate_socket.exists()
    workers = gateway._workers(master)
    for pid in (master, *workers):  # killed, as by the OOM killer: nothing cleans up
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in (master, *workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.gate_socket.exists()  # nobody removed it
    gateway.start()
    assert post(gateway, "/model/my%20model/3/invocations").status_code == 503
    assert post(gateway, "/model/nothing/1/invocations").status_code == 404


def test_a_data_dir_too_long_for_the_socket_is_said_plainly(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    gw = Gateway(Settings(data_dir=deep, nginx_bin=shutil.which("nginx") or "/usr/sbin/nginx", auth=False))
    with pytest.raises(GatewayConfigError, match="too long"):
        gw.write_main()
