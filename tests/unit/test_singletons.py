"""One reconciler per data dir, and a webhook that only wakes it when signed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import subprocess
import sys
from pathlib import Path

from supervisor.api.app import create_app
from supervisor.settings import Settings
from supervisor.store import Store


def test_a_second_reconciler_refuses_to_start(tmp_path: Path) -> None:
    env = dict(os.environ, MODELSERVE_DATA_DIR=str(tmp_path), MODELSERVE_TRACKING_URI="http://127.0.0.1:9")
    code = "from supervisor.reconciler import _single_instance; from supervisor.settings import Settings; " \
           "import time; lock = _single_instance(Settings()); print('locked', flush=True); time.sleep(600)"
    # The first holds the lock until killed below: the second's start (a new Python importing the
    # reconciler) may take long on a loaded machine, and must still meet the lock held.
    first = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "-m", "supervisor.reconciler"], env=env, capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 1
        assert "another reconciler is already running" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_webhook_checks_the_signature_and_wakes_the_reconciler(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, webhook_secret="s3cret")
    settings.run_dir.mkdir(parents=True)
    app = create_app(settings, store=Store(f"sqlite:///{tmp_path / 's.db'}"), registry=object(),  # type: ignore[arg-type]
                     runtime=object())  # type: ignore[arg-type]
    client = app.test_client()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(settings.wake_socket))
        listener.settimeout(5)
        body = b'{"entity": "model_version", "action": "created"}'
        bad = client.post("/api/2.0/modelserve/webhook", data=body, headers={"X-MLflow-Signature": "v1,nope"})
        assert bad.status_code == 401 and bad.get_json()["error_code"] == "UNAUTHENTICATED"
        headers = {"X-MLflow-Delivery-Id": "d1", "X-MLflow-Timestamp": "123"}
        digest = hmac.new(b"s3cret", b"d1.123." + body, hashlib.sha256).digest()
        headers["X-MLflow-Signature"] = "v1," + base64.b64encode(digest).decode()
        good = client.post("/api/2.0/modelserve/webhook", data=body, headers=headers)
        assert good.status_code == 200
        assert listener.recv(16) == b"wake"
