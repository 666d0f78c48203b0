"""The gateway container's control socket: a supervisor that cannot see Nginx's processes has it
reloaded, with routes live on return. A real Nginx run by the real gateway role
(``python -m supervisor.stack gateway``) in a process of its own, as compose.yaml runs it; the
supervisor's side is a ``Gateway`` with ``compose=True``, which never signals Nginx itself."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from supervisor import gatewaycontrol
from supervisor.gateway import Gateway, GatewayConfigError
from supervisor.routing import ModelRoutes, VersionRoute
from supervisor.settings import Settings
from tests.support import free_port, wait_until
from tests.unit.test_gateway import Echo, UnixEcho

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture()
def role(tmp_path: Path) -> Iterator[tuple[Gateway, subprocess.Popen[bytes]]]:
    settings = Settings(data_dir=tmp_path, port=free_port(), api_port=free_port(), mlflow_port=free_port(),
                        nginx_bin=NGINX, auth=False, compose=True)
    supervisor_side = Gateway(settings)
    env = {**os.environ, "MODELSERVE_DATA_DIR": str(tmp_path), "MODELSERVE_PORT": str(settings.port),
           "MODELSERVE_NGINX_BIN": NGINX, "MODELSERVE_AUTH": "off"}
    env.pop("MODELSERVE_COMPOSE", None)
    log = (tmp_path / "gateway-role.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.stack", "gateway"], env=env, stdout=log, stderr=log,
                            start_new_session=True)
    try:
        supervisor_side.attach(timeout=60)
        yield supervisor_side, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def test_routes_applied_through_the_control_socket_are_live_on_return(
        role: tuple[Gateway, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    gateway, proc = role
    assert gateway.is_running()
    backend = UnixEcho(str(tmp_path / "backend0.sock"), Echo)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{gateway.settings.port}/model/m/1/invocations"
        assert requests.post(url, data=b"[]", timeout=10).status_code == 404
        routes = [ModelRoutes("m", (VersionRoute("1", "ready", f"unix:{backend.server_address}"),), (), ())]
        assert gateway.apply_routes(routes).changed
        # No retry: the reload returned only once every accepting worker had the new routes.
        r = requests.post(url, data=b"[]", timeout=10)
        assert r.status_code == 200 and r.json()["port"] == "backend0"
        assert gateway.reopen_logs()
        # The supervisor's side never signals: it has no pid of Nginx's to signal.
        gateway.stop()
        assert proc.poll() is None and gateway.is_running()
    finally:
        backend.shutdown()
        backend.server_close()


def test_a_config_nginx_refuses_is_reported_and_the_gateway_keeps_serving(
        role: tuple[Gateway, subprocess.Popen[bytes]]) -> None:
    gateway, _ = role
    gateway.main_conf.write_text(gateway.main_conf.read_text().replace("worker_processes", "no_such_directive"))
    with pytest.raises(GatewayConfigError, match="no_such_directive") as refused:
        gateway.reload()
    assert str(refused.value).startswith("nginx reload failed:") and str(refused.value).count("reload failed") == 1
    r = requests.get(f"http://127.0.0.1:{gateway.settings.port}/model/m/1/invocations", timeout=10)
    assert r.status_code in (404, 405)


def test_a_stop_signal_ends_nginx_and_the_role_with_it(role: tuple[Gateway, subprocess.Popen[bytes]]) -> None:
    gateway, proc = role
    master = int(gatewaycontrol.call(gateway.control or Path(), "ping", timeout=10))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    wait_until("nginx's master to exit", lambda: not Path(f"/proc/{master}").exists(), timeout=30)
    assert not gateway.is_running()
    assert not (gateway.control or Path("x")).exists()


def test_unknown_commands_are_refused_and_the_socket_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    server = gatewaycontrol.ControlServer(path, {"ping": lambda: "1"}).start()
    try:
        assert path.stat().st_mode & 0o077 == 0  # nobody but its owner (root in the stack)
        assert gatewaycontrol.call(path, "ping", timeout=5) == "1"
        with pytest.raises(gatewaycontrol.GatewayControlError, match="unknown command"):
            gatewaycontrol.call(path, "rm -rf /", timeout=5)
        # A line with no end, longer than any command, is cut and refused, not waited on for ever.
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(15)
            s.connect(str(path))
            s.sendall(b"x" * 5000)
            assert s.recv(4096).startswith(b"error unknown command")
    finally:
        server.close()
    with pytest.raises(gatewaycontrol.GatewayControlError, match="did not answer"):
        gatewaycontrol.call(path, "ping", timeout=5)
