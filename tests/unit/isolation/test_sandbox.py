"""The box's command line (a pure function) and, with the real bubblewrap, what a process inside sees."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.isolation import sandbox
from supervisor.isolation.box import Box

BOX = Box(uid=70099, gid=70099, memory_bytes=256 << 20, cpus=1.0, pids=64, tmp_bytes=8 << 20)


def test_as_root_it_drops_to_the_model_uid_and_keeps_no_user_namespace() -> None:
    argv = sandbox.command(BOX, root=True, readonly=[Path("/opt/a/env")], writable=[Path("/srv/d/box")],
                           workdir=Path("/srv/d/box"), argv=["python3", "keeper.py"])
    assert "--unshare-all" not in argv and "--unshare-net" in argv and "--unshare-pid" in argv
    after = argv[argv.index("--") + 1:]
    assert after[:2] == ["/usr/bin/setpriv", "--reuid=70099"] and after[-2:] == ["python3", "keeper.py"]
    assert "--no-new-privs" in after and "--bounding-set=-all" in after and "--clearenv" in argv
    # Parents are made before the paths bound below them, each at its own path.
    assert argv.index("/opt/a") < argv.index("--ro-bind", argv.index("/opt/a"))
    i = argv.index("/srv/d/box")
    assert argv[i - 1] == "--bind" and argv[i + 1] == "/srv/d/box"


def test_network_access_shares_the_network_and_an_ordinary_user_gets_a_user_namespace() -> None:
    net = Box(**{**BOX.__dict__, "network": True})
    root = sandbox.command(net, root=True, readonly=[], writable=[], workdir=Path("/"), argv=["true"])
    assert "--unshare-net" not in root
    user = sandbox.command(net, root=False, readonly=[], writable=[], workdir=Path("/"), argv=["true"])
    assert "--unshare-all" in user and "--share-net" in user and "/usr/bin/setpriv" not in user


def test_a_root_box_without_a_uid_is_refused() -> None:
    with pytest.raises(ValueError):
        sandbox.command(Box(**{**BOX.__dict__, "uid": None}), root=True, readonly=[], writable=[],
                        workdir=Path("/"), argv=["true"])


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("bwrap") is None, reason="the box as root needs root and bwrap")
def test_inside_the_box_as_root(tmp_path: Path) -> None:
    mine, secret = tmp_path / "box", tmp_path / "secret"
    mine.mkdir()
    os.chown(mine, BOX.uid or 0, BOX.gid or 0)
    secret.write_text("admin password")
    probe = (
        "import json, os, socket\n"
        "st = open('/proc/self/status').read()\n"
        "out = {'uid': os.getuid(), 'caps': st.split('CapEff:')[1].split()[0],\n"
        "       'nnp': st.split('NoNewPrivs:')[1].split()[0], 'procs': [p for p in os.listdir('/proc') if p.isdigit()]}\n"
        f"try: open({str(secret)!r}).read(); out['secret'] = 'READ'\n"
        "except OSError as e: out['secret'] = type(e).__name__\n"
        "try: open('/usr/x', 'w'); out['usr'] = 'WROTE'\n"
        "except OSError as e: out['usr'] = type(e).__name__\n"
        "open('written', 'w').write('ok')\n"
        "print(json.dumps(out))\n"
    )
    prefix = Path(sys.base_prefix).resolve()
    argv = sandbox.command(BOX, root=True, readonly=[prefix], writable=[mine], workdir=mine,
                           argv=[str(prefix / "bin" / "python3"), "-c", probe])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["uid"] == BOX.uid and seen["caps"] == "0000000000000000" and seen["nnp"] == "1"
    assert seen["secret"] == "FileNotFoundError"  # not even there
    assert seen["usr"] in ("OSError", "PermissionError")  # read-only file system
    assert len(seen["procs"]) <= 3  # bubblewrap's init, itself (and perhaps the listing's own)
    assert (mine / "written").read_text() == "ok"
