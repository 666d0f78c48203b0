"""The gateway's control socket: how a supervisor that shares no PID namespace with Nginx reloads it.

In compose.yaml, and under ``docker stack deploy`` (where a service cannot join another's
namespaces at all), Nginx runs in a gateway container of its own, so that restarting the
supervisor never interrupts scoring. The supervisor still renders and checks every config (same
image, same data dir at the same path), but it cannot signal a process it cannot see. So the
gateway container's first process stays Nginx's parent and answers one-line commands on a Unix
socket in the nginx directory of the data dir, the one thing both containers share:

* ``ping``: ``ok <nginx master pid>`` while Nginx runs;
* ``reload``: ``ok`` once every worker taking new connections runs the new config (the same wait
  as a local ``Gateway.reload``), or ``error <Nginx's words>``;
* ``reopen``: ``ok`` once Nginx reopened its logs.

A Unix socket, not a port: nothing on any network can reach it, and the data dir is never mounted
into a model's box. Commands are served one at a time, in order, as a local caller would run them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MAX_LINE = 256


class GatewayControlError(Exception):
    """The gateway container did not answer, or answered with an error."""


def call(path: Path, command: str, timeout: float) -> str:
    """Send one command, return the answer after ``ok`` (raises GatewayControlError otherwise)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(command.encode() + b"\n")
            answer = _read_line(sock, limit=64 * 1024)
    except OSError as exc:
        raise GatewayControlError(f"the gateway's control socket {path} did not answer {command!r}: {exc}") from exc
    word, _, rest = answer.partition(" ")
    if word != "ok":
        raise GatewayControlError(rest or answer or f"the gateway closed the connection on {command!r}")
    return rest


def _read_line(sock: socket.socket, limit: int) -> str:
    data = b""
    while b"\n" not in data and len(data) <= limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")


class ControlServer:
    """Answers ``ping``/``reload``/``reopen`` on ``path`` with the handlers given, on a thread."""

    def __init__(self, path: Path, handlers: dict[str, Callable[[], str]]) -> None:
        self.path = path
        self.handlers = handlers
        self._lock = threading.Lock()
        path.unlink(missing_ok=True)  # left by a gateway container that was killed
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)  # owner only: a reload is the supervisor's to ask for
        try:
            self.sock.bind(str(path))
        finally:
            os.umask(old)
        self.sock.listen(16)
        self._thread = threading.Thread(target=self._serve, name="gateway-control", daemon=True)

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                command = _read_line(conn, limit=MAX_LINE).strip()
            except OSError:
                return
            handler = self.handlers.get(command)
            if handler is None:
                reply = f"error unknown command {command[:40]!r}; known: {', '.join(sorted(self.handlers))}"
            else:
                with self._lock:
                    try:
                        reply = f"ok {handler()}".rstrip()
                    except Exception as exc:  # the caller gets the reason; this server goes on
                        log.warning("gateway control %s failed: %s", command, exc)
                        reply = "error " + " ".join(str(exc).split())
            with contextlib.suppress(OSError):
                conn.settimeout(None)
                conn.sendall(reply.encode() + b"\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.path.unlink(missing_ok=True)
