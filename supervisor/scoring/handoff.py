"""Handing a version's listening socket from one generation of its scoring server to the next.

A version must keep answering when its server's parent process dies. Its forked workers outlive
the parent and go on accepting on the listening socket; the replacement the model host starts
takes that very socket from them (passed as a file descriptor over a Unix socket) and only then
asks them to retire. One socket throughout means one kernel accept queue: every connection
already queued, and every one arriving meanwhile, is accepted by one generation or the other. A
fresh bind would be a second socket, and connections still queued on the old one when it closed
would be reset.

Each worker offers the socket at ``<dir>/<pid>.sock`` (mode 0600; the directory is the host's
state dir, which only the host's user reaches). Stdlib only: it runs in the model's own
environment, whatever its Python (``sendmsg`` rather than 3.9's ``send_fds``).
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

TIMEOUT = 2.0  # a holder that does not hand over within this is hung, not busy
RETIRE = b"retire\n"
# A Unix socket's path must fit in sockaddr_un (108 bytes on Linux); a data dir and a model's name
# can make it longer, so longer paths go through a descriptor of their directory.
MAX_PATH = 100


@contextlib.contextmanager
def _reachable(path: Path) -> Any:
    """A name for ``path`` short enough to bind or connect to: the path itself, or the same file
    reached through /proc/self/fd and a descriptor of its directory (held open meanwhile)."""
    if len(os.fsencode(str(path))) <= MAX_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def same_address(name: Any, address: Any) -> bool:
    """Whether a listening socket's name is ``address``: the same host and port, or, for a Unix
    socket, any Unix socket (each version has a handoff directory of its own, and a Unix listener
    is named by the temporary path it was bound to before being renamed into place)."""
    if isinstance(address, str):
        return isinstance(name, (str, bytes))
    return isinstance(name, tuple) and isinstance(address, tuple) and tuple(name[:2]) == tuple(address[:2])


class Offer:
    """Offers ``listener`` to whoever connects at ``<directory>/<pid>.sock``; calls ``on_retire``
    once a taker says it accepts on it now."""

    def __init__(self, directory: Path, listener: socket.socket, on_retire: Callable[[], None]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{os.getpid()}.sock"
        self.listener = listener
        self.on_retire = on_retire
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _reachable(self.path) as name:
                self.sock.bind(name)
            os.chmod(self.path, 0o600)
        except OSError:
            self.sock.close()
            raise
        self.sock.listen(8)
        threading.Thread(target=self._accept, name="handoff", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._hand_over, args=(conn,), daemon=True).start()

    def _hand_over(self, conn: socket.socket) -> None:
        with conn:
            try:
                fds = array.array("i", [self.listener.fileno()])
                conn.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                # The taker keeps the connection open while it starts its workers, then says so;
                # a taker that dies first closes it, and this generation just goes on serving.
                conn.settimeout(None)
                said = conn.makefile("rb").readline()
            except OSError:
                return
        if said == RETIRE:
            self.on_retire()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def _receive(path: Path) -> tuple[socket.socket, socket.socket] | None:
    """(the offered listener, the connection to its holder), or None when nobody offers there."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(TIMEOUT)
    try:
        with _reachable(path) as name:
            conn.connect(name)
    except (ConnectionRefusedError, FileNotFoundError):
        conn.close()
        with contextlib.suppress(OSError):
            path.unlink()  # left by a process that was killed
        return None
    except OSError:
        conn.close()
        return None
    try:
        _, ancillary, _, _ = conn.recvmsg(1, socket.CMSG_SPACE(array.array("i").itemsize))
    except OSError:
        conn.close()
        return None
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if not fds:
        conn.close()
        return None
    for extra in fds[1:]:
        os.close(extra)
    return socket.socket(fileno=fds[0]), conn


def take(directory: Path, address: tuple[str, int] | str) -> tuple[socket.socket | None, list[socket.socket]]:
    """The listening socket at ``address`` that an earlier generation offers in ``directory``, and
    the connections to every holder of it (to retire them with ``retire``); (None, []) when none
    offers it. Only one socket can listen on an address, so every offer is the same socket."""
    listener: socket.socket | None = None
    holders: list[socket.socket] = []
    if not directory.is_dir():
        return None, []
    for path in sorted(directory.glob("*.sock")):
        if path.stem == str(os.getpid()):
            continue
        got = _receive(path)
        if got is None:
            continue
        sock, conn = got
        try:
            matches = sock.type == socket.SOCK_STREAM and same_address(sock.getsockname(), address)
        except OSError:
            matches = False
        if not matches:
            sock.close()
            conn.close()
            continue
        if listener is None:
            listener = sock
        else:
            sock.close()
        holders.append(conn)
    return listener, holders


def retire(holders: list[socket.socket]) -> None:
    """Tells every holder that the new generation accepts on the socket now."""
    for conn in holders:
        with contextlib.suppress(OSError):
            conn.sendall(RETIRE)
        with contextlib.suppress(OSError):
            conn.close()
