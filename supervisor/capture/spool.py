"""Reading a version's capture spool, and retiring it without losing a record.

The spool is written inside the model's box (``supervisor/scoring/spool.py``), so every line is
untrusted: a line that is not a well-formed record, or longer than a record can be, is skipped,
and a line without an end waits (it is still being written) unless it is already too long to be
one, when the reader skips past its next newline. The reader never blocks the writers: it
retires a spool by renaming it (new records go to a new file) and taking ``LOCK_EX`` once on the
renamed one, which waits out any writer holding its shared lock; from then on the retired file
is final, is read to its end, and is deleted by the ingester only after the rows it fed are
committed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from supervisor import naming
from supervisor.scoring.spool import MAX_BODY

# A body of 1 MB escaped as JSON (\u00XX per byte at worst), plus the keys.
MAX_LINE = 6 * MAX_BODY + 256
MAX_READ = 4 * MAX_LINE
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
RETIRED = ".retired-"


def spool_folder(spool_dir: Path, model: str) -> Path:
    """A model's own folder of spools: the one its box may write."""
    return spool_dir / naming.model_id(model)


def spool_path(spool_dir: Path, model: str, version: str) -> Path:
    """A version's spool, named after the upstream the gateway routes it by, which is how its
    records are matched to the gateway's lines."""
    return spool_folder(spool_dir, model) / f"{naming.upstream_name(model, version)}.spool"


@dataclass(frozen=True)
class SpoolRecord:
    request_id: str
    size: int
    body: str | None  # None: over the limit (truncated)


def parse_record(line: bytes) -> SpoolRecord | None:
    """A record of either form ``supervisor/scoring/spool.py`` writes or wrote, or None."""
    if line.startswith(b"{"):
        return _parse_json_record(line)
    parts = line.split(b" ", 3)
    if len(parts) < 3 or not parts[1].isdigit():
        return None
    try:
        rid = parts[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    if not REQUEST_ID.match(rid):
        return None
    size, kind = int(parts[1]), parts[2]
    if kind == b"T":
        return SpoolRecord(rid, size, None) if size > MAX_BODY and len(parts) == 3 else None
    if len(parts) != 4:
        return None
    if kind == b"R":
        body: object = parts[3].decode("utf-8", errors="replace")
    elif kind == b"J":
        try:
            body = json.loads(parts[3])
        except ValueError:
            return None
    else:
        return None
    if not isinstance(body, str) or len(body) > MAX_BODY:
        return None
    return SpoolRecord(rid, size, body)


def _parse_json_record(line: bytes) -> SpoolRecord | None:
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    rid, size, body = raw.get("id"), raw.get("size"), raw.get("body")
    if not isinstance(rid, str) or not REQUEST_ID.match(rid):
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return None
    if raw.get("truncated") is True:
        return SpoolRecord(rid, size, None) if size > MAX_BODY else None
    if not isinstance(body, str) or len(body) > MAX_BODY:
        return None
    return SpoolRecord(rid, size, body)


def open_regular(path: Path) -> int | None:
    """A descriptor of ``path`` if it is a regular file, else None. The folder belongs to the
    model's uid: a symlink it put there is never followed (the ingester may run as root), and a
    FIFO never blocks the open."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def read_records(path: Path, offset: int) -> tuple[list[SpoolRecord], int]:
    """The records of whole lines from ``offset`` on, and the offset after the last line consumed."""
    fd = open_regular(path)
    if fd is None:
        return [], offset
    try:
        data = os.pread(fd, MAX_READ, offset)
    finally:
        os.close(fd)
    out: list[SpoolRecord] = []
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            if len(data) - start > MAX_LINE:  # no record is this long: skip it whole
                start = len(data)
            break
        if end - start <= MAX_LINE:
            rec = parse_record(data[start:end])
            if rec is not None:
                out.append(rec)
        start = end + 1
    return out, offset + start


def retire(path: Path) -> Path | None:
    """Renames the live spool aside and waits out its writers; the retired path, or None when
    there was nothing to retire. After this no record is ever added to the retired file."""
    retired = path.with_name(f"{path.name}{RETIRED}{time.time_ns()}")
    try:
        os.rename(path, retired)
    except FileNotFoundError:
        return None
    fd = open_regular(retired)
    if fd is None:  # not a file the scoring server wrote: it is read as empty and deleted
        return retired
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer that got its shared lock first finishes its line
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return retired

