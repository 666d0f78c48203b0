"""A tiny sdist whose in-tree build backend is hostile: while it builds, it tries what a
malicious ``setup.py`` would (read a secret, write outside, reach a loopback listener, see the
supervisor's variables) and builds those findings into the wheel it makes, so a test reads them
back by importing the package from the finished environment."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

NAME = "buildprobe"

BACKEND = '''
import base64, hashlib, json, os, socket, zipfile

NAME, VERSION = "buildprobe", "0.1"
TARGETS = json.loads(%(targets)r)


def _try(what, fn):
    try:
        return "SUCCEEDED: " + str(fn())[:100]
    except OSError as exc:
        return "refused: " + type(exc).__name__


def _write(path):
    with open(path, "w") as f:
        f.write("hostile")
    return path


def _connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    s.close()
    return port


def _foreign(names):
    seen = [n for n in names if n not in ("models", "envs")]
    if seen:
        return seen
    raise PermissionError("only the box's own entries")


def _probe():
    return {
        "uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(),
        "environ": sorted(os.environ),
        "attempts": {
            "read secret": _try("read", lambda: open(TARGETS["secret"]).read()),
            # Only the box's own skeleton (the dirs leading to what it is given) may show.
            "list data dir": _try("list", lambda: _foreign(os.listdir(TARGETS["data_dir"]))),
            "write data dir": _try("write", lambda: _write(os.path.join(TARGETS["data_dir"], "pwned"))),
            "write /etc": _try("write", lambda: _write("/etc/pwned-by-build")),
            "write model files": _try("write", lambda: _write(os.path.join(TARGETS["model_files"], "pwned"))),
            "connect loopback": _try("connect", lambda: _connect(TARGETS["port"])),
        },
    }


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    report = _probe()
    if TARGETS.get("fail"):
        raise SystemExit("buildprobe refuses to build: " + json.dumps(report))
    files = {
        NAME + ".py": "REPORT = " + repr(json.dumps(report)) + "\\n",
        NAME + "-" + VERSION + ".dist-info/METADATA": "Metadata-Version: 2.1\\nName: " + NAME + "\\nVersion: " + VERSION + "\\n",
        NAME + "-" + VERSION + ".dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: buildprobe\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }
    record = NAME + "-" + VERSION + ".dist-info/RECORD"
    lines = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        lines.append(name + ",sha256=" + digest + "," + str(len(text.encode())))
    lines.append(record + ",,")
    files[record] = "\\n".join(lines) + "\\n"
    wheel = NAME + "-" + VERSION + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return wheel
'''

PYPROJECT = '''[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "buildprobe"
version = "0.1"
'''

PKG_INFO = "Metadata-Version: 2.1\nName: buildprobe\nVersion: 0.1\n"


def write_sdist(directory: Path, targets: str) -> Path:
    """``buildprobe-0.1.tar.gz`` in ``directory``; ``targets``: the JSON of what to try."""
    path = directory / "buildprobe-0.1.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in (("backend.py", BACKEND % {"targets": targets}), ("pyproject.toml", PYPROJECT),
                           ("PKG-INFO", PKG_INFO)):
            data = text.encode()
            info = tarfile.TarInfo(f"buildprobe-0.1/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
