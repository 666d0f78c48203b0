"""Where scoring servers listen: one Unix socket per version, in a directory per model.

A loopback TCP port can be scored by any local process, around the gateway's access check; a
Unix socket is reached through the file system, so a directory only the model's host (its uid)
and the gateway (root, or the supervisor's own user) may enter keeps everyone else out. Nginx's
upstreams are ``unix:`` addresses. A Unix socket's path must fit in 108 bytes: the directory
layout is short on purpose, and ``check_length`` says so at start-up instead of failing later.

This module is also the supervisor's one HTTP client for such sockets (``ping``, ``request``):
the deployer's health check, the docker runtime's switch-over and the tests use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import stat
import threading
from pathlib import Path

# Where a model's box sees its own socket directory (bubblewrap and docker bind it there).
IN_BOX_DIR = "/run/modelserve/sock"
SUN_PATH_MAX = 107  # sockaddr_un's 108 bytes, less the terminating NUL
LONGEST_VERSION = 4  # room kept for a version number in a socket's name (up to 9999)


def model_dir(sockets_dir: Path, model: str) -> Path:
    """A model's socket directory: named by a hash of the name alone (``naming.model_id``'s
    readable slug would cost 40 of the 108 bytes)."""
    return sockets_dir / hashlib.sha256(model.encode("utf-8")).hexdigest()[:12]


def socket_name(version: str) -> str:
    return f"{version}.sock"


def upstream(path: Path | str) -> str:
    """The Nginx ``server`` address of a socket."""
    return f"unix:{path}"


# The longest names under a sockets dir that are bound or connected to (a Unix path's limit): a
# process-runtime server's temporary bind name beside its socket, /<model hash 12>/.<pid, up to
# 7>.<version>.sock, and the gateway's published link of a docker container's socket,
# /p/<model hash 12>/<container 10>/<version>.sock (inside a container the server binds below
# the short /run/modelserve/sock).
_LONGEST_BELOW = max(1 + 12 + 1 + 1 + 7 + 1, 2 + 1 + 12 + 1 + 10 + 1) + LONGEST_VERSION + len(".sock")


def check_length(sockets_dir: Path) -> str | None:
    """Why sockets under ``sockets_dir`` could not be reached (too long a path), or None."""
    longest = len(os.fsencode(str(sockets_dir))) + _LONGEST_BELOW
    if longest > SUN_PATH_MAX:
        return (f"the scoring servers' socket directory {sockets_dir} is too long for Unix socket paths "
                f"(up to {longest} > {SUN_PATH_MAX} bytes); set MODELSERVE_SOCKET_DIR to a shorter path")
    return None


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (``path``), everything else as for TCP."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _path(address: str) -> str:
    if not address.startswith("unix:"):
        raise ValueError(f"not a Unix socket address: {address!r}")
    return address.removeprefix("unix:")


def request(address: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of one request to the scoring server at ``address`` (``unix:/...``, or
    ``host:port`` for a replica on another node)."""
    conn: http.client.HTTPConnection
    if address.startswith("unix:"):
        conn = UnixHTTPConnection(_path(address), timeout=timeout)
    else:
        host, _, port = address.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ping(address: str, timeout: float = 2.0) -> bool:
    """Whether the server at ``address`` answers /ping; for several (replicas, separated by
    spaces), whether every one does."""
    if len(address.split()) > 1:
        return all(ping(a, timeout) for a in address.split())
    try:
        return request(address, "GET", "/ping", timeout=timeout)[0] == 200
    except (OSError, ValueError, http.client.HTTPException):
        return False


def published_path(sockets_dir: Path, source: Path) -> Path:
    """Where the gateway reaches ``source`` (``<sockets>/<model>[/<container>]/<v>.sock``): the same
    relative path below ``<sockets>/p/``, a tree only the supervisor writes."""
    return sockets_dir / "p" / source.relative_to(sockets_dir)


def source_path(sockets_dir: Path, published: Path) -> Path:
    """The box's own path of a published socket (``published_path`` undone)."""
    return sockets_dir / published.relative_to(sockets_dir / "p")


def publish(source: Path, published: Path) -> bool:
    """Makes ``published`` a hard link of the socket now at ``source``; True when it is one.

    A box owns its socket directory and may replace its socket by a symlink to another model's
    socket, or to any socket on the machine; Nginx connects as root and would follow it. So the
    gateway never connects to the box's own path: whatever the entry there is, its inode is
    hard-linked (``link`` without following) into a directory the box cannot write, and only what
    that link turns out to be is trusted: a socket is published, anything else (a symlink, a
    file) is dropped. No second lookup of the box's path is involved, so there is nothing to race.
    A hard link of a bound socket connects to the same listener; when the server binds afresh (a
    new inode) the next call links the new one."""
    try:
        published.parent.mkdir(parents=True, exist_ok=True)
        tmp = published.with_name(f".{published.name}.{os.getpid()}.{threading.get_ident()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(source, tmp, follow_symlinks=False)
    except OSError:
        return False
    try:
        got = os.lstat(tmp)
        if not stat.S_ISSOCK(got.st_mode):
            return False
        with contextlib.suppress(FileNotFoundError):
            now = os.lstat(published)
            if (now.st_dev, now.st_ino) == (got.st_dev, got.st_ino):
                return True
        os.replace(tmp, published)
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
