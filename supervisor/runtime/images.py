"""Docker images for the docker runtime: Dockerfiles rendered from Jinja templates in ``images/``,
their build contexts, and builds streamed into a log.

Two kinds of image, so that Docker's layer cache does the work the environment cache does for
local processes:

* ``modelserve-env:<env hash>-<base>``: one version's environment, built with uv on the base image.
  Named by the same content hash as a local environment, so a version with the same requirements
  finds it built, and a failing build fails only the versions that need it (its log is theirs).
* ``modelserve-model-<model id>:<desired hash>``: the model host and scoring server, then per
  version in version order its environment (``COPY --from`` the env image, one layer) and its model
  files. A new version only appends layers; everything before it is a cache hit.

Rendering is pure (testable without Docker); only ``build_image`` talks to the engine.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2

from supervisor.envs import EnvSpec
from supervisor.settings import REPO_ROOT

IMAGES_DIR = REPO_ROOT / "images"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
MODELHOST = PACKAGE_DIR / "host" / "modelhost.py"
KEEPER = PACKAGE_DIR / "host" / "keeper.py"  # the container's PID 1: a killed host is started again
SCORING_DIR = PACKAGE_DIR / "scoring"  # server.py imports its siblings: the whole folder ships
ENVS_ROOT = "/opt/envs"
MODELS_ROOT = "/opt/models"
CONTAINER_STATE_DIR = "/state"
CONTAINER_SPOOL_DIR = "/capture"  # the model's capture spools (supervisor/capture), bind-mounted rw
_EXACT_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_SAFE_VERSION_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Package-index settings a build may need; only network URLs go in (a host's file:// index
# cannot be reached from inside a build).
_INDEX_VARS = ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_INDEX", "PIP_INDEX_URL",
               "PIP_EXTRA_INDEX_URL", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
               "no_proxy")
CA_IN_BUILD = "/tmp/modelserve-build/ca-bundle.crt"


class ImageBuildError(Exception):
    """``docker build`` failed; the message ends with the tail of its output."""


@dataclass(frozen=True)
class ModelImageVersion:
    version: str
    env_hash: str
    env_image: str  # "" when an earlier version already copied the same environment in
    model_dir: Path


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(IMAGES_DIR)), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["q"] = shlex.quote
    return env


def short_hash(text: str, length: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def env_image_tag(env_hash: str, base_image: str) -> str:
    # The base image is part of the name: an environment links to the base image's Python.
    return f"modelserve-env:{env_hash}-{short_hash(base_image, 8)}"


def env_python(env_hash: str) -> Path:
    """The environment's python inside any image that holds it."""
    return Path(ENVS_ROOT) / env_hash / "bin" / "python"


def index_build_args(environ: Mapping[str, str]) -> dict[str, str]:
    """The host's package index settings as build arguments (pip's names mapped to uv's, as the
    local builder does), plus SSL_CERT_FILE pointing at the CA bundle copied into the context."""
    args = {k: environ[k] for k in _INDEX_VARS if environ.get(k) and "file://" not in environ[k]}
    if "PIP_INDEX_URL" in args and not ({"UV_INDEX_URL", "UV_DEFAULT_INDEX"} & args.keys()):
        args["UV_INDEX_URL"] = args["PIP_INDEX_URL"]
    if "PIP_EXTRA_INDEX_URL" in args and not ({"UV_EXTRA_INDEX_URL", "UV_INDEX"} & args.keys()):
        args["UV_EXTRA_INDEX_URL"] = args["PIP_EXTRA_INDEX_URL"]
    if ca_bundle(environ) is not None:
        args["SSL_CERT_FILE"] = CA_IN_BUILD
    return args


def ca_bundle(environ: Mapping[str, str]) -> Path | None:
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return None


def _local_files(lines: Iterable[str]) -> tuple[list[str], dict[str, Path]]:
    """Requirement lines that name a host file (a bundled wheel) point into the build context."""
    out: list[str] = []
    files: dict[str, Path] = {}
    for line in lines:
        requirement, semicolon, markers = line.partition(";")
        candidate = requirement.strip()
        if os.path.isabs(candidate) and Path(candidate).is_file():
            name = f"{len(files)}-{Path(candidate).name}"
            files[name] = Path(candidate)
            line = f"/tmp/modelserve-build/files/{name}" + (f" ;{markers}" if semicolon else "")
        out.append(line)
    return out, files


@dataclass(frozen=True)
class EnvBuild:
    dockerfile: str
    script: str
    requirements: str
    constraints: str
    files: dict[str, Path]
    build_args: dict[str, str]


def render_env_build(spec: EnvSpec, base_image: str, environ: Mapping[str, str]) -> EnvBuild:
    requirements, files = _local_files(spec.requirements)
    constraints, more = _local_files(spec.constraints)
    files.update(more)
    exact = _EXACT_VERSION_RE.match(spec.python)
    fallback = f"{exact.group(1)}.{exact.group(2)}" if exact else ""
    build_args = index_build_args(environ)
    env = _environment()
    dockerfile = env.get_template("env.Dockerfile.j2").render(
        base_image=base_image, env_hash=spec.hash, build_args=sorted(build_args))
    script = env.get_template("build-env.sh.j2").render(
        env_hash=spec.hash, python=spec.python, fallback=fallback, requirements=bool(requirements),
        requirements_count=len(requirements), constraints=bool(constraints))
    return EnvBuild(dockerfile, script, "\n".join(requirements) + "\n", "\n".join(constraints) + "\n", files,
                    build_args)


def env_context(build: EnvBuild, uv_binary: Path, ca: Path | None) -> bytes:
    members: dict[str, Path | bytes] = {
        "Dockerfile": build.dockerfile.encode(),
        "uv": uv_binary,
        "build/build-env.sh": build.script.encode(),
        "build/requirements.txt": build.requirements.encode(),
        "build/constraints.txt": build.constraints.encode(),
    }
    if ca is not None:
        members["build/ca-bundle.crt"] = ca
    for name, path in build.files.items():
        members[f"build/files/{name}"] = path
    return _tar(members)


def model_image_versions(versions: Iterable[tuple[str, str, Path]], base_image: str) -> list[ModelImageVersion]:
    """(version, env hash, model dir) in version order; each distinct environment copied once."""
    seen: set[str] = set()
    out = []
    for version, env_hash, model_dir in sorted(versions, key=lambda v: _version_key(v[0])):
        if not _SAFE_VERSION_RE.match(version):
            raise ValueError(f"version {version!r} cannot name a folder")
        image = "" if env_hash in seen else env_image_tag(env_hash, base_image)
        seen.add(env_hash)
        out.append(ModelImageVersion(version, env_hash, image, model_dir))
    return out


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def render_model_dockerfile(base_image: str, versions: list[ModelImageVersion]) -> str:
    return _environment().get_template("model.Dockerfile.j2").render(base_image=base_image, versions=versions)


def model_context(dockerfile: str, versions: list[ModelImageVersion]) -> bytes:
    members: dict[str, Path | bytes] = {
        "Dockerfile": dockerfile.encode(),
        "modelserve/modelhost.py": MODELHOST,
        "modelserve/keeper.py": KEEPER,
        **{f"modelserve/{path.name}": path for path in scoring_files()},
    }
    for v in versions:
        for path in sorted(v.model_dir.rglob("*")):
            if path.is_file():
                members[f"models/{v.version}/{path.relative_to(v.model_dir).as_posix()}"] = path
    return _tar(members)


def scoring_files() -> list[Path]:
    return sorted(p for p in SCORING_DIR.glob("*.py") if p.name != "__init__.py")


def code_hash() -> str:
    """Changes when the model host or the scoring server changes, so their images are rebuilt."""
    return short_hash(MODELHOST.read_text() + KEEPER.read_text() + "".join(p.read_text() for p in scoring_files()),
                      16)


def _tar(members: Mapping[str, Path | bytes]) -> bytes:
    """A build context with fixed timestamps and owners, so identical content gives identical
    layers and the cache is hit."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in members.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            executable = isinstance(content, Path) and os.access(content, os.X_OK)
            info.mode = 0o755 if executable or name == "uv" else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_image(api: Any, context: bytes, tag: str, log_path: Path, build_args: Mapping[str, str] | None = None,
                progress: Callable[[str], None] | None = None, labels: Mapping[str, str] | None = None) -> None:
    """``docker build`` through the engine API, its output appended to ``log_path`` (without the
    colour codes the engine wraps stderr in); lines our build script marks with
    ``==> modelserve:`` are also reported to ``progress``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        log.write(f"[{stamp}] docker build -t {tag}\n")
        log.flush()
        start = log.tell()
        stream = api.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag, rm=True, forcerm=True,
                           buildargs=dict(build_args or {}), network_mode="host", decode=True,
                           labels=dict(labels or {}))
        error = None
        pending = ""  # the engine sends pieces of lines: report whole lines only
        for chunk in stream:
            if chunk.get("error"):
                error = _ANSI_RE.sub("", str(chunk["error"])).strip()
            text = _ANSI_RE.sub("", str(chunk.get("stream") or chunk.get("status") or ""))
            if not text:
                continue
            log.write(text)
            log.flush()
            pending += text
            *lines, pending = pending.split("\n")
            for line in lines:
                if progress and line.startswith("==> modelserve: "):
                    progress(line.removeprefix("==> modelserve: "))
        if pending:
            log.write("\n")
    if error is not None:
        with log_path.open(encoding="utf-8", errors="replace") as f:
            f.seek(start)
            tail = [ln.rstrip() for ln in f.read().splitlines() if ln.strip()][-15:]
        raise ImageBuildError(f"docker build of {tag} failed: {error}\n" + "\n".join(tail))


def container_labels(model: str, model_id: str, instance: str, desired: str, versions: Iterable[str]) -> dict[str, str]:
    return {
        "modelserve.instance": instance,
        "modelserve.model": model,
        "modelserve.model-id": model_id,
        "modelserve.desired-hash": desired,
        "modelserve.versions": ",".join(sorted(versions, key=_version_key)),
    }
