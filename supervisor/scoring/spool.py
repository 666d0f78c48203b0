"""The scoring server's half of an inference table: the response body of each sampled request,
carried with the answer in a response header when small (``inline``), else appended to its
version's spool file before the answer leaves.

The gateway decides what is sampled and says so in a header only it can set
(``X-Modelserve-Capture: <request id>``); this side only appends, so the scoring path gains one
``write()`` (plus a shared ``flock`` and a ``stat``) per sampled request and no waiting on a
database. Each record is one whole line in one ``write()`` on an ``O_APPEND`` descriptor: a
process killed after it loses nothing, and no two records interleave. The ingester retires a
spool by renaming it and taking ``LOCK_EX`` on it; a writer checks, under its shared lock, that
the path still names its file, else it reopens, so no record lands in a retired file after it
was read (``supervisor/capture/spool.py``). Stdlib only: it runs in the model's environment.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import threading

# Bodies larger than this are recorded as truncated with their size (Databricks logs none over 1 MB).
MAX_BODY = 1 << 20
HEADER = "X-Modelserve-Capture"
TRIES = 100
# A sampled answer up to this size carries its own body, base64, in this response header: the
# gateway logs it on the request's capture line and strips it (proxy_hide_header), so the scoring
# path makes no system call for it. The spool's flock, stat and write, each releasing and taking
# back the GIL among the server's threads, cost a quarter of a single-row request's CPU.
INLINE_HEADER = "X-Modelserve-Capture-Body"
INLINE_MAX = 4096


def inline(body: bytes) -> str | None:
    """The header value that carries ``body`` to the gateway's capture line, or None for a body
    too large for a response header (it is appended to the spool instead)."""
    return base64.b64encode(body).decode("ascii") if len(body) <= INLINE_MAX else None


def record(request_id: str, body: bytes) -> bytes:
    """One spool line: ``<id> <size> <kind>[ <body>]``. The kind says how the body follows:
    ``R`` as it is (a body without a newline, which every JSON answer of the scoring server is),
    ``J`` as a JSON string (one with a newline), ``T`` not at all (over the limit: truncated).
    A JSON object per line cost the scoring path the body's escaping on every sampled request;
    the reader still takes that older form (``{"id": ...}``), which a spool may hold across an
    upgrade."""
    head = b"%s %d " % (request_id.encode("ascii", errors="replace"), len(body))  # not hex: the reader skips it
    if len(body) > MAX_BODY:
        return head + b"T\n"
    if b"\n" not in body:
        return head + b"R " + body + b"\n"
    text = json.dumps(body.decode("utf-8", errors="replace"), ensure_ascii=False)
    return head + b"J " + text.encode("utf-8") + b"\n"


class SpoolWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = 0

    def _open(self) -> int:
        # A forked worker must not share its parent's open file (flock belongs to it): one per process.
        if self._fd < 0 or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o660)
            self._pid = os.getpid()
        return self._fd

    def append(self, request_id: str, body: bytes) -> bool:
        """Appends the record; False if it could not be written (the row then has no response)."""
        line = record(request_id, body)
        with self._lock:
            # Each miss means the ingester retired the file in between (at most once a second in
            # service; back to back in the tests): a bounded number of tries, microseconds each.
            for _ in range(TRIES):
                try:
                    fd = self._open()
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    try:
                        mine, now = os.fstat(fd), os.stat(self.path)
                        if (mine.st_ino, mine.st_dev) == (now.st_ino, now.st_dev):
                            return os.write(fd, line) == len(line)
                    except FileNotFoundError:
                        pass
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)  # retired by the ingester: the next try opens the new file
                    self._fd = -1
                except OSError:
                    self._fd = -1
                    return False
        return False
