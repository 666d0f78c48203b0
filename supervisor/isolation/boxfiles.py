"""Reading what a box wrote: status records and logs in a directory the model's own code can change.

The model host writes its status and each version's log for the supervisor, and the model's code
runs as the same user, so it can rewrite or replace any of those files: make one a symlink to the
admin's password file, a directory a symlink into the data dir, a status file gigabytes long or
full of wrong types. The supervisor runs as root or as the data dir's owner, so reading such a
file naively would hand the target to whoever may read the model's logs. Every path component
below the trusted directory is therefore opened with ``O_NOFOLLOW`` (a symlink anywhere fails),
only regular files are read, and at most a bounded number of bytes; what the JSON says is
checked by its reader, never trusted.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_RECORD_BYTES = 1 << 20  # a status record is a few kB; more is not a status record


@contextlib.contextmanager
def open_below(root: Path, relative: str) -> Iterator[int]:
    """A read-only descriptor of the regular file ``root/relative``, reached without following
    any symlink below ``root`` (OSError otherwise)."""
    parts = [p for p in relative.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise OSError(f"not a plain relative path: {relative!r}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        if not stat.S_ISREG(os.fstat(leaf).st_mode):
            raise OSError(f"{relative} is not a regular file")
        yield leaf
    finally:
        os.close(leaf)


def read_record(root: Path, relative: str) -> dict[str, Any] | None:
    """A JSON object the box wrote, or None (missing, not a regular file, too long, not an object)."""
    try:
        with open_below(root, relative) as fd:
            raw = os.read(fd, MAX_RECORD_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_RECORD_BYTES:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def tail(root: Path, relative: str, max_bytes: int) -> str:
    """The last ``max_bytes`` of a log the box wrote ("" when there is none to read safely)."""
    try:
        with open_below(root, relative) as fd:
            size = os.fstat(fd).st_size
            os.lseek(fd, max(0, size - max_bytes), os.SEEK_SET)
            return os.read(fd, max_bytes).decode(errors="replace")
    except OSError:
        return ""
