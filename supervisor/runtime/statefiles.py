"""The runtimes' state files (JSON records, the tail of a log), and the probe for a free scoring port.

Both runtimes find what they started again from files (spec, status, host and active-container
records), so a restarted supervisor adopts instead of restarting. Writes go to a temporary file
named for the writing process and thread, then ``os.replace``: a reader never sees half a file,
and two writers never share a temporary file. A file that is missing or not a JSON object reads
as None, which every caller treats as "nothing recorded".
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def port_is_free(port: int) -> bool:
    """Whether a scoring server could bind ``port`` on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def tail_text(path: Path, max_bytes: int) -> str:
    """The last ``max_bytes`` of a log file as text ("" when it does not exist yet)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
