"""Reading the gateway's metrics log: one JSON line per request to ``/model/...`` or to a serving
endpoint (``/serving-endpoints/...``, whose lines also name the endpoint and the entity).

Nginx writes the lines itself (a buffered ``access_log`` flushed every second, see
``nginx/nginx.conf.j2``), so the scoring hot path gains no work and no process in it has to
know about metrics. Only the reconciler, a singleton, reads the file: it resumes from a byte
offset kept with the aggregates (nothing counted twice or lost across its restarts) and rotates
the file itself (rename, ``nginx -s reopen``, drain the old file on the next read).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The file is rotated past this size; the aggregates keep the history, the log is only a queue.
ROTATE_BYTES = 64 << 20
# One read never takes more than this; the rest waits for the next poll.
MAX_READ_BYTES = 16 << 20


@dataclass(frozen=True)
class Access:
    at: float  # seconds since the epoch, when the request ended
    uri: str  # Nginx's decoded $uri
    status: int
    seconds: float  # $request_time
    target: str  # $ms_target: an upstream name, "pending", or "" (no route)
    endpoint: str = ""  # $ms_endpoint: the serving endpoint a /serving-endpoints/ path names
    entity: str = ""  # $ms_ep_entity: the served entity the split (or the path) chose


def parse_line(line: str) -> Access | None:
    """One log line, or None for anything that is not a well-formed line of ours."""
    try:
        raw = json.loads(line)
        return Access(at=float(raw["t"]), uri=str(raw["u"]), status=int(raw["s"]),
                      seconds=float(raw["d"]), target=str(raw["x"]), endpoint=str(raw.get("e", "")),
                      entity=str(raw.get("n", "")))
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class Position:
    inode: int = 0
    offset: int = 0


def _complete_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """Whole lines from ``offset`` on (a line still being written waits), and the new offset."""
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(MAX_READ_BYTES)
    end = data.rfind(b"\n") + 1
    # Split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 and the like, which
    # Nginx's escape=json passes through raw inside a logged body, and a line cut there is lost.
    return data[:end].decode("utf-8", errors="replace").split("\n")[:-1], offset + end


class LogTail:
    def __init__(self, path: Path, reopen: Callable[[], bool], rotate_bytes: int = ROTATE_BYTES) -> None:
        self.path = path
        self.old = path.with_name(path.name + ".1")
        self.reopen = reopen
        self.rotate_bytes = rotate_bytes

    def read(self, pos: Position) -> tuple[list[str], Position]:
        lines: list[str] = []
        pos = Position(pos.inode, pos.offset)
        # A rotation happened at an earlier read: finish the old file once Nginx has reopened. Its
        # master makes the new file when it does; until then (a loaded machine can take longer
        # than a tick to get there) its workers still write to the old one, which must stay.
        if self.old.exists() and os.stat(self.old).st_ino == pos.inode and self.path.exists():
            while True:
                got, offset = _complete_lines(self.old, pos.offset)
                lines += got
                if offset == pos.offset:
                    break
                pos.offset = offset
            self.old.unlink(missing_ok=True)
            pos = Position(0, 0)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return lines, pos
        if st.st_ino != pos.inode or st.st_size < pos.offset:
            pos = Position(st.st_ino, 0)
        got, pos.offset = _complete_lines(self.path, pos.offset)
        lines += got
        if pos.offset >= self.rotate_bytes:
            os.replace(self.path, self.old)
            if not self.reopen():  # Nginx would keep writing to the renamed file: undo
                os.replace(self.old, self.path)
        return lines, pos
