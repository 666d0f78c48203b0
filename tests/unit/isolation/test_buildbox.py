"""Environment builds keep package code in the model's box: the variables it gets, the command
it runs in, and real builds (real uv, real bubblewrap, a real sdist whose build backend is
hostile, ``buildpkg.py``) that must install wheels-only outside the box and build from source
only inside it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import envs
from supervisor.envs import EnvBuilder, EnvBuildError, EnvSpec
from supervisor.isolation.box import Box
from supervisor.isolation.buildbox import BuildBox, build_env
from supervisor.settings import Settings
from tests.unit.isolation.buildpkg import write_sdist

BOX = Box(uid=70123, gid=70123, memory_bytes=1 << 30, cpus=1.0, pids=256, tmp_bytes=256 << 20)
UV = Path(sys.executable).parent / "uv"


def test_a_build_gets_the_index_settings_and_no_secret() -> None:
    tool = {"PATH": "/usr/bin", "HOME": "/root", "UV_INDEX_URL": "https://index.example/simple",
            "PIP_FIND_LINKS": "/opt/wheels", "HTTPS_PROXY": "http://proxy:3128", "SSL_CERT_FILE": "/etc/ssl/ca.pem",
            "UV_CACHE_DIR": "/root/.cache/uv", "MODELSERVE_ADMIN_PASSWORD": "s3cret", "MLFLOW_TRACKING_PASSWORD": "x",
            "UV_INDEX_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "k", "PIP_PASSWORD": "p"}
    assert build_env(tool) == {"UV_INDEX_URL": "https://index.example/simple", "PIP_FIND_LINKS": "/opt/wheels",
                               "HTTPS_PROXY": "http://proxy:3128", "SSL_CERT_FILE": "/etc/ssl/ca.pem"}


def test_the_boxed_command_binds_uv_and_what_it_is_given(tmp_path: Path) -> None:
    build = BuildBox(BOX, root=True, uv=UV)
    env_dir, cache = tmp_path / "env", tmp_path / "cache"
    argv = build.command(["uv", "pip", "install"], readonly=[Path("/usr/lib"), tmp_path / "model"],
                         writable=[env_dir, cache], workdir=env_dir, network=True, env={"UV_CACHE_DIR": str(cache)})
    pairs = list(zip(argv, argv[1:], argv[2:], strict=False))
    assert ("--ro-bind", str(UV.resolve()), str(UV.resolve())) in pairs
    assert ("--ro-bind", str(tmp_path / "model"), str(tmp_path / "model")) in pairs
    assert ("--bind", str(env_dir), str(env_dir)) in pairs and ("--bind", str(cache), str(cache)) in pairs
    assert ("--ro-bind", "/usr/lib", "/usr/lib") not in pairs  # inside the system base already
    assert "--unshare-net" not in argv  # it needs the index
    assert ("--setenv", "UV_CACHE_DIR", str(cache)) in pairs and "--clearenv" in argv
    assert argv[argv.index("--") + 1].endswith("setpriv") and f"--reuid={BOX.uid}" in argv
    offline = build.command(["python"], readonly=[], writable=[], workdir=env_dir, network=False, env={})
    assert "--unshare-net" in offline


# --- real builds ---------------------------------------------------------------------------------
needs_root_box = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("bwrap") is None or shutil.which("iptables") is None or not UV.exists(),
    reason="a build box as root needs root, bubblewrap, iptables and uv")


@pytest.fixture()
def listener() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    yield int(s.getsockname()[1])
    try:
        conn, _ = s.accept()
    except BlockingIOError:
        pass
    else:
        conn.close()
        raise AssertionError("the build reached the test's loopback listener")
    finally:
        s.close()


def _setup(tmp_path: Path, port: int, fail: bool) -> tuple[EnvBuilder, EnvSpec, Settings]:
    data = tmp_path / "data"
    settings = Settings(data_dir=data, build_timeout=300)
    secret = data / "auth" / "admin_password"
    secret.parent.mkdir(parents=True)
    secret.write_text("the-admin-password")
    secret.chmod(0o600)
    model_files = data / "models" / "m" / "1"
    model_files.mkdir(parents=True)
    targets = {"secret": str(secret), "data_dir": str(data), "model_files": str(model_files), "port": port,
               "fail": fail}
    sdist = write_sdist(model_files, json.dumps(targets))
    version = ".".join(map(str, sys.version_info[:3]))
    spec = EnvSpec(python=version, requirements=(str(sdist),), build_dependencies=(), source="requirements.txt")
    return EnvBuilder(settings), spec, settings


@needs_root_box
def test_a_source_build_runs_in_the_models_box_and_the_environment_is_roots(
        tmp_path: Path, listener: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSERVE_ADMIN_PASSWORD", "the-admin-password")
    monkeypatch.setattr(envs, "SMOKE_IMPORT", "import buildprobe")  # no mlflow to download for this test
    builder, spec, settings = _setup(tmp_path, listener, fail=False)
    log = tmp_path / "build.log"
    python = builder.build(spec, log, confine=BuildBox(BOX, root=True, uv=UV))
    text = log.read_text()
    print(text)
    assert "--no-build" in text and "installing inside the model's box" in text
    report = json.loads(subprocess.run([str(python), "-I", "-c", "import buildprobe; print(buildprobe.REPORT)"],
                                       capture_output=True, text=True, check=True, cwd="/").stdout)
    print(json.dumps(report, indent=1))
    assert (report["uid"], report["gid"], report["euid"]) == (BOX.uid, BOX.gid, BOX.uid)
    assert {k: v for k, v in report["attempts"].items() if not v.startswith("refused")} == {}
    assert not [k for k in report["environ"] if "PASSWORD" in k or k.startswith("MODELSERVE")], report["environ"]
    env_dir = python.parent.parent
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in [env_dir, *env_dir.rglob("*")]}
    assert owners == {(0, 0)}, owners
    assert not list(settings.envs_dir.glob(".cache-*")) and not (settings.data_dir / "pwned").exists()


@needs_root_box
def test_a_failing_source_build_says_why_and_leaves_nothing(tmp_path: Path, listener: int) -> None:
    builder, spec, settings = _setup(tmp_path, listener, fail=True)
    log = tmp_path / "build.log"
    with pytest.raises(EnvBuildError, match="installing the model's requirements failed") as failed:
        builder.build(spec, log, confine=BuildBox(BOX, root=True, uv=UV))
    assert "buildprobe refuses to build" in str(failed.value)
    assert not builder.is_built(spec)
    assert [p.name for p in settings.envs_dir.iterdir() if not p.name.endswith(".lock")] == []
