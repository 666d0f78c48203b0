"""Per-model Python environments, built with uv from the model's own files and cached by content.

Why it is built this way:

* **Content-hash cache.** An environment is named by a hash of what goes into it (Python request,
  requirement lines, constraints, build dependencies and ``RECIPE_VERSION``), not by model name or
  version, so a second version with the same requirements reuses the first one's environment, and
  bumping ``RECIPE_VERSION`` retires every environment built by an older recipe.
* **Atomic rename + marker.** A build happens in ``envs_dir/.building-<hash>-<random>``, is moved into
  place with ``os.replace`` and only then gets its ``.modelserve-complete`` marker. A build killed at
  any point therefore leaves either a ``.building-*`` directory or an unmarked one, and neither is ever
  taken for a usable environment; the next build of the same hash sweeps both away.
* **flock per hash.** Several processes (API workers, reconciler) may ask for the same environment at
  once; an exclusive ``fcntl.flock`` on ``envs_dir/<hash>.lock`` makes them build it once, the others
  waiting and then reusing it. The kernel drops the lock when its holder dies, so there is no stale
  lock to clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from supervisor.isolation import netguard
from supervisor.isolation.buildbox import BuildBox, build_env
from supervisor.settings import Settings

# Bump whenever the way environments are built changes, so old cache entries are not reused.
RECIPE_VERSION = 1
MARKER_NAME = ".modelserve-complete"
REQUIREMENTS_NAME = ".modelserve-requirements.txt"
CONSTRAINTS_NAME = ".modelserve-constraints.txt"
SMOKE_IMPORT = "import mlflow.pyfunc"
FAST_JSON = "orjson"  # added to every environment when it installs (see _add_fast_json)
# How many lines of a failing tool's output are quoted in the exception message.
ERROR_TAIL_LINES = 15

# conda packages that exist only to provide the interpreter and the installer; uv covers both.
_CONDA_IGNORED = {"python", "pip"}
_NAME_RE = re.compile(r"^\s*(?:[\w.-]+::)?([A-Za-z0-9_.-]+)")
_EXACT_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
# uv's words when a wheels-only install meets a requirement that must be built from source.
_NEEDS_BUILD_RE = re.compile(r"(?i)building (source distributions|from source) is disabled|no usable wheels"
                             r"|--no-build")
# Lines of a requirements file that pull in another file, as pip spells them.
_INCLUDE_RE = re.compile(r"^(-r|--requirement|-c|--constraint)(?:\s+|=)(.+)$")
# pip archive/file requirements that mlflow writes as paths relative to the model dir (e.g. wheels/).
_LOCAL_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2")


class EnvSpecError(Exception):
    """The model's files cannot be turned into a uv environment; the message says why."""


class EnvBuildError(Exception):
    """Building an environment failed; ``log_path`` holds the full build log."""

    def __init__(self, message: str, log_path: Path) -> None:
        super().__init__(message)
        self.log_path = log_path


@dataclass(frozen=True)
class EnvSpec:
    python: str  # a uv Python request: "3.11.7", "3.11" or a specifier such as ">=3.9"
    requirements: tuple[str, ...]  # pip requirement lines, "-r"/"-c" includes already inlined
    build_dependencies: tuple[str, ...]
    source: str  # "python_env.yaml" | "conda.yaml" | "requirements.txt"
    constraints: tuple[str, ...] = ()

    @property
    def hash(self) -> str:
        # `source` is left out on purpose: the same content read from conda.yaml or
        # python_env.yaml yields the same environment.
        canonical = json.dumps(
            {
                "recipe": RECIPE_VERSION,
                "python": self.python,
                "requirements": list(self.requirements),
                "constraints": list(self.constraints),
                "build_dependencies": list(self.build_dependencies),
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Reading the model's environment files
# --------------------------------------------------------------------------------------------


def read_env_spec(model_dir: Path) -> EnvSpec:
    """Read a model directory's environment, preferring python_env.yaml, then conda.yaml,
    then a bare requirements.txt (the same order MLflow's virtualenv/uv managers use)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EnvSpecError(f"model directory {model_dir} does not exist")
    env_files = _mlmodel_env_files(model_dir)
    python_env = model_dir / env_files.get("virtualenv", "python_env.yaml")
    conda_env = model_dir / env_files.get("conda", "conda.yaml")
    if python_env.is_file():
        return _from_python_env(model_dir, python_env)
    if conda_env.is_file():
        return _from_conda(model_dir, conda_env)
    if (model_dir / "requirements.txt").is_file():
        reqs, cons = _expand_lines(model_dir, ["-r requirements.txt"], model_dir)
        python = _mlmodel_python(model_dir) or _current_python()
        return EnvSpec(python, reqs, (), "requirements.txt", cons)
    raise EnvSpecError(
        f"model directory {model_dir} has no python_env.yaml, conda.yaml or requirements.txt; "
        "cannot tell which packages the model needs"
    )


def _from_python_env(model_dir: Path, path: Path) -> EnvSpec:
    data = _load_yaml(path)
    python = _str_or_none(data.get("python"), path, "python") or _mlmodel_python(model_dir)
    if not python:
        raise EnvSpecError(f"{path.name} has no 'python' version and MLmodel has no python_version")
    deps = _str_list(data.get("dependencies"), path, "dependencies")
    build = _str_list(data.get("build_dependencies"), path, "build_dependencies")
    reqs, cons = _expand_lines(model_dir, deps, model_dir)
    return EnvSpec(python, reqs, tuple(_clean_lines(build)), "python_env.yaml", cons)


def _from_conda(model_dir: Path, path: Path) -> EnvSpec:
    data = _load_yaml(path)
    deps = data.get("dependencies") or []
    if not isinstance(deps, list):
        raise EnvSpecError(f"{path.name}: 'dependencies' must be a list")
    python: str | None = None
    pip_lines: list[str] = []
    for dep in deps:
        if isinstance(dep, dict) and set(dep) == {"pip"}:
            pip_lines.extend(_str_list(dep["pip"], path, "pip"))
            continue
        if not isinstance(dep, str | int | float):
            raise EnvSpecError(f"{path.name}: unsupported dependency entry {dep!r}")
        dep_str = str(dep).strip()
        match = _NAME_RE.match(dep_str)
        name = match.group(1).lower() if match else dep_str
        if name == "python":
            python = _conda_python_request(dep_str[match.end() if match else 0 :], path)
        elif name not in _CONDA_IGNORED:
            raise EnvSpecError(
                f"conda-only dependency '{dep_str}' in {path.name} cannot be installed with uv; "
                "move it to the pip section or log the model with a pip requirement instead"
            )
    python = python or _mlmodel_python(model_dir)
    if not python:
        raise EnvSpecError(f"{path.name} pins no python and MLmodel has no python_version")
    reqs, cons = _expand_lines(model_dir, pip_lines, model_dir)
    return EnvSpec(python, reqs, (), "conda.yaml", cons)


def _conda_python_request(spec: str, path: Path) -> str | None:
    """Turn the version part of a conda ``python`` match spec into a uv Python request."""
    spec = spec.strip().split()[0] if spec.strip() else ""
    if not spec:
        return None
    if spec.startswith("=") and not spec.startswith("=="):
        spec = spec[1:]  # conda "python=3.11" means 3.11.*
    elif spec.startswith("=="):
        spec = spec[2:]
    else:
        return spec  # a range such as ">=3.9,<3.12" is already a request uv understands
    version = spec.removesuffix(".*").removesuffix("*").rstrip(".")
    if not re.fullmatch(r"\d+(\.\d+){0,2}", version):
        raise EnvSpecError(f"{path.name}: cannot understand python pin {spec!r}")
    return version


def _expand_lines(
    model_dir: Path, lines: list[str], base: Path, seen: frozenset[Path] = frozenset()
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Inline ``-r``/``-c`` includes (relative to the including file) into (requirements, constraints).

    Included files must live inside the model directory: a model must not read host files into
    the install command."""
    reqs: list[str] = []
    cons: list[str] = []
    for line in _clean_lines(lines):
        include = _INCLUDE_RE.match(line)
        if not include:
            reqs.append(_absolutize_local(line, model_dir))
            continue
        target = _resolve_inside(model_dir, base, include.group(2).strip())
        if target in seen:
            raise EnvSpecError(f"requirements include cycle through {target.name}")
        file_lines = target.read_text().splitlines()
        sub_reqs, sub_cons = _expand_lines(model_dir, file_lines, target.parent, seen | {target})
        if include.group(1) in ("-c", "--constraint"):
            # A constraints file only constrains; its own includes are constraints too.
            cons.extend(sub_reqs + sub_cons)
        else:
            reqs.extend(sub_reqs)
            cons.extend(sub_cons)
    return tuple(reqs), tuple(cons)


def _resolve_inside(model_dir: Path, base: Path, name: str) -> Path:
    target = (base / name).resolve()
    root = model_dir.resolve()
    if target != root and root not in target.parents:
        raise EnvSpecError(f"requirements include {name!r} points outside the model directory")
    if not target.is_file():
        raise EnvSpecError(f"requirements include {name!r} not found in {model_dir}")
    return target


def _absolutize_local(line: str, model_dir: Path) -> str:
    """MLflow writes bundled wheels as paths relative to the model dir (``wheels/x.whl``); uv runs
    elsewhere, so point them at the model dir explicitly."""
    requirement, semicolon, markers = line.partition(";")
    candidate = requirement.strip()
    looks_local = candidate.startswith(("./", "../")) or candidate.endswith(_LOCAL_SUFFIXES)
    if looks_local and "://" not in candidate and not os.path.isabs(candidate):
        path = model_dir / candidate
        if path.exists():
            return str(path.resolve()) + (f" ;{markers}" if semicolon else "")
    return line


def _clean_lines(lines: list[str]) -> list[str]:
    """Drop comments and blank lines and join backslash continuations, as pip does."""
    out: list[str] = []
    pending = ""
    for raw in lines:
        line = pending + raw
        pending = ""
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1]
            continue
        # pip treats "#" as a comment only at the start or after whitespace (URLs keep "#egg=").
        line = re.sub(r"(^|\s+)#.*$", "", line).strip()
        if line:
            out.append(line)
    if pending.strip():
        out.append(pending.strip())
    return out


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise EnvSpecError(f"{path.name} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EnvSpecError(f"{path.name} must be a YAML mapping, got {type(data).__name__}")
    return data


def _str_list(value: Any, path: Path, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise EnvSpecError(f"{path.name}: '{key}' must be a list of strings")
    return [str(v) for v in value]


def _str_or_none(value: Any, path: Path, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int | float):
        raise EnvSpecError(f"{path.name}: '{key}' must be a string")
    return str(value).strip() or None


def _mlmodel(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "MLmodel"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise EnvSpecError(f"MLmodel is not valid YAML: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _pyfunc_flavor(model_dir: Path) -> dict[str, Any]:
    flavors = _mlmodel(model_dir).get("flavors") or {}
    pyfunc = flavors.get("python_function") if isinstance(flavors, dict) else None
    return pyfunc if isinstance(pyfunc, dict) else {}


def _mlmodel_python(model_dir: Path) -> str | None:
    version = _pyfunc_flavor(model_dir).get("python_version")
    return str(version).strip() if version else None


def _mlmodel_env_files(model_dir: Path) -> dict[str, str]:
    # MLmodel 2.0+ names its env files ({conda: ..., virtualenv: ...}); 1.x gives a bare conda path.
    env = _pyfunc_flavor(model_dir).get("env")
    if isinstance(env, str):
        return {"conda": env}
    if isinstance(env, dict):
        return {k: str(v) for k, v in env.items() if isinstance(v, str)}
    return {}


def _current_python() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])


# --------------------------------------------------------------------------------------------
# Building environments
# --------------------------------------------------------------------------------------------


class _StepFailed(Exception):
    def __init__(self, returncode: int, tail: str) -> None:
        super().__init__(tail)
        self.returncode = returncode
        self.tail = tail


class _StepTimedOut(Exception):
    pass


class EnvBuilder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.envs_dir = settings.envs_dir

    def env_path(self, spec: EnvSpec) -> Path:
        return self.envs_dir / spec.hash

    def python_of(self, spec: EnvSpec) -> Path:
        return self.env_path(spec) / "bin" / "python"

    def is_built(self, spec: EnvSpec) -> bool:
        # The marker is written after the final rename, so it alone proves the build finished;
        # the interpreter check catches a host whose base Python was removed since.
        return (self.env_path(spec) / MARKER_NAME).is_file() and self.python_of(spec).exists()

    def build(self, spec: EnvSpec, log_path: Path, progress: Callable[[str], None] | None = None,
              confine: BuildBox | None = None) -> Path:
        """Return the environment's python, building it first unless a finished one exists.
        ``confine``: the box that package code of the build runs in (``isolation/buildbox.py``);
        None runs everything as the supervisor (no sandbox)."""
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.envs_dir.mkdir(parents=True, exist_ok=True)
        log = _BuildLog(log_path, progress)
        if self.is_built(spec):
            log.step(f"reusing cached environment {spec.hash}")
            return self.python_of(spec)
        uv = self.uv_binary(log_path)
        with self._locked(spec, log):
            if self.is_built(spec):
                log.step(f"reusing cached environment {spec.hash} (built by a concurrent build)")
                return self.python_of(spec)
            self._sweep_leftovers(spec, log)
            return self._build_locked(spec, uv, log, confine)

    # -- steps ---------------------------------------------------------------------------------

    def _build_locked(self, spec: EnvSpec, uv: str, log: _BuildLog, confine: BuildBox | None) -> Path:
        started = time.monotonic()
        tmp = self.envs_dir / f".building-{spec.hash}-{secrets.token_hex(4)}"
        log.line(f"building environment {spec.hash} from {spec.source} into {tmp.name}")
        try:
            python_request = self._create_venv(spec, uv, tmp, log)
            self._install(spec, uv, tmp, log, confine)
            self._smoke_check(tmp, log, confine)
            final = self.env_path(spec)
            os.replace(tmp, final)
            elapsed = time.monotonic() - started
            self._write_marker(spec, final, python_request, elapsed)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.step(f"environment {spec.hash} ready in {elapsed:.1f} s")
        return self.python_of(spec)

    def _create_venv(self, spec: EnvSpec, uv: str, tmp: Path, log: _BuildLog) -> str:
        requests = [spec.python]
        exact = _EXACT_VERSION_RE.match(spec.python)
        if exact:
            requests.append(f"{exact.group(1)}.{exact.group(2)}")
        failures: list[str] = []
        for i, request in enumerate(requests):
            if i:
                log.line(
                    f"WARNING: Python {spec.python} is not available on this host; "
                    f"falling back to Python {request} (same minor version, different patch)"
                )
            log.step(f"step 1/3: creating virtualenv with Python {request}")
            try:
                self._run([uv, "venv", "--relocatable", "--python", request, str(tmp)], log)
                return request
            except _StepFailed as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if exc.returncode < 0:  # killed: the Python may well exist; no fallback
                    raise EnvBuildError(f"creating the virtualenv failed:\n{exc.tail}", log.path) from None
                failures.append(f"[Python {request}] {exc.tail}")
        raise EnvBuildError(
            f"Python {spec.python} is not available on this host:\n" + "\n".join(failures), log.path
        )

    def _install(self, spec: EnvSpec, uv: str, tmp: Path, log: _BuildLog, confine: BuildBox | None) -> None:
        if spec.build_dependencies:
            log.line(
                "skipping build_dependencies "
                f"({', '.join(spec.build_dependencies)}): uv needs no pip/setuptools/wheel to install"
            )
        if not spec.requirements:
            log.step("step 2/3: no requirements to install")
            return
        reqs_file = tmp / REQUIREMENTS_NAME
        reqs_file.write_text("\n".join(spec.requirements) + "\n")
        cmd = [uv, "pip", "install", "--python", str(tmp / "bin" / "python"), "-r", str(reqs_file)]
        if spec.constraints:
            cons_file = tmp / CONSTRAINTS_NAME
            cons_file.write_text("\n".join(spec.constraints) + "\n")
            cmd += ["-c", str(cons_file)]
        log.step(f"step 2/3: installing {len(spec.requirements)} requirements")
        log.line("requirements:\n  " + "\n  ".join(spec.requirements))
        if spec.constraints:
            log.line("constraints:\n  " + "\n  ".join(spec.constraints))
        try:
            # Boxed builds install wheels first, outside the box: that runs no package code.
            self._run(cmd + (["--no-build"] if confine else []), log)
        except _StepFailed as exc:
            if confine is None or not _NEEDS_BUILD_RE.search(exc.tail):
                raise EnvBuildError(
                    f"installing the model's requirements failed:\n{exc.tail}", log.path
                ) from None
            self._install_boxed(cmd, tmp, log, confine)
        self._add_fast_json(uv, tmp, log, confine)

    def _install_boxed(self, cmd: list[str], tmp: Path, log: _BuildLog, confine: BuildBox) -> None:
        """The install again, allowed to build from source, inside the model's box."""
        log.step("step 2/3: a requirement must be built from source: installing inside the model's box")
        if confine.root:
            problem = netguard.ensure(self.settings)
            if problem:
                raise EnvBuildError("a requirement must be built from source, which needs the package index from "
                                    f"inside a box, and its network cannot be kept off this machine's loopback "
                                    f"here ({problem})", log.path)
        else:
            log.line("note: the supervisor is not root, so this boxed build step can reach this machine's loopback")
        cache = self.envs_dir / f".cache-{tmp.name}"
        cache.mkdir()
        try:
            confine.give([tmp, cache])
            env = {**build_env(self._tool_env()), "UV_CACHE_DIR": str(cache), "UV_PYTHON_DOWNLOADS": "never",
                   "UV_NO_PROGRESS": "1", "NO_COLOR": "1"}
            argv = confine.command(cmd, readonly=[interpreter_prefix(tmp / "bin" / "python"),
                                                  *_local_requirements(cmd, self.settings.models_dir)],
                                   writable=[tmp, cache], workdir=tmp, network=True, env=env)
            try:
                self._run(argv, log, shown=cmd)
            except _StepFailed as exc:
                raise EnvBuildError(f"installing the model's requirements failed:\n{exc.tail}", log.path) from None
        finally:
            shutil.rmtree(cache, ignore_errors=True)
            confine.take_back([tmp])

    def _add_fast_json(self, uv: str, tmp: Path, log: _BuildLog, confine: BuildBox | None) -> None:
        # The scoring server parses and writes JSON with orjson when the environment has it
        # (several times faster than json for large requests). It has no dependencies, and a model
        # that already pins a version keeps it; where no wheel exists, json does the work.
        try:
            self._run([uv, "pip", "install", "--python", str(tmp / "bin" / "python"), FAST_JSON,
                       *(["--no-build"] if confine else [])], log)
        except _StepFailed:
            log.line(f"{FAST_JSON} could not be added; the scoring server uses the standard json module")

    def _smoke_check(self, tmp: Path, log: _BuildLog, confine: BuildBox | None) -> None:
        log.step("step 3/3: checking that mlflow.pyfunc imports")
        # -I and cwd=tmp: nothing from the supervisor's own environment or working directory may
        # satisfy the import in its place. The environment's first Python runs its packages' code
        # (imports, .pth files): in the model's box, without network.
        cmd = [str(tmp / "bin" / "python"), "-I", "-c", SMOKE_IMPORT]
        argv = cmd if confine is None else confine.command(
            cmd, readonly=[tmp, interpreter_prefix(tmp / "bin" / "python")], writable=[], workdir=tmp,
            network=False, env={})
        try:
            self._run(argv, log, cwd=tmp, shown=cmd)
        except _StepFailed as exc:
            raise EnvBuildError(f"environment has no usable mlflow:\n{exc.tail}", log.path) from None

    def _run(self, cmd: list[str], log: _BuildLog, cwd: Path | None = None, shown: list[str] | None = None) -> None:
        """Run one build command with its output appended to the log; raise with the output's tail.
        ``shown``: what the log names instead of ``cmd`` (a boxed command's own part)."""
        timeout = self.settings.build_timeout
        log.line("$ " + shlex.join(shown or cmd) + (" (in the model's box)" if shown else ""))
        offset = log.flush_offset()
        with open(log.path, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._tool_env(),
                cwd=cwd or self.envs_dir,
                # Own process group, so a timeout kills uv's children (build backends) too.
                start_new_session=True,
                # The child inherits the lock: if this process dies, an orphaned uv still writing
                # into the temp dir keeps the hash locked, so no new build sweeps it mid-write.
                pass_fds=(log.lock_fd,) if log.lock_fd is not None else (),
            )
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                log.line(f"killed after {timeout:g} s")
                raise EnvBuildError(f"build timed out after {timeout:g} s", log.path) from None
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        if returncode != 0:
            tail = log.tail_since(offset)
            if returncode < 0:
                # Killed from outside (the out-of-memory killer, an operator): say so, since the
                # tool's own output then ends mid-sentence and names no reason.
                killed = f"{cmd[0].rsplit('/', 1)[-1]} was killed by {_signal_name(-returncode)}"
                log.line(killed)
                tail = f"{tail}\n{killed}".strip()
            else:
                log.line(f"exit status {returncode}")
            raise _StepFailed(returncode, tail)

    def _tool_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["UV_PYTHON_DOWNLOADS"] = "never"  # the host cannot download Pythons; fail fast instead
        env["NO_COLOR"] = "1"  # keep escape codes out of logs and error messages
        env["UV_NO_PROGRESS"] = "1"
        for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(var, None)
        # uv does not read pip's settings; carry the host's index configuration over.
        if "PIP_INDEX_URL" in env and not ({"UV_INDEX_URL", "UV_DEFAULT_INDEX"} & env.keys()):
            env["UV_INDEX_URL"] = env["PIP_INDEX_URL"]
        if "PIP_EXTRA_INDEX_URL" in env and not ({"UV_EXTRA_INDEX_URL", "UV_INDEX"} & env.keys()):
            env["UV_EXTRA_INDEX_URL"] = env["PIP_EXTRA_INDEX_URL"]
        if "PIP_FIND_LINKS" in env and "UV_FIND_LINKS" not in env:
            env["UV_FIND_LINKS"] = env["PIP_FIND_LINKS"]
        if "PIP_CERT" in env and "SSL_CERT_FILE" not in env:
            env["SSL_CERT_FILE"] = env["PIP_CERT"]
        return env

    # -- cache bookkeeping ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, spec: EnvSpec, log: _BuildLog) -> Iterator[None]:
        lock_path = self.envs_dir / f"{spec.hash}.lock"
        with open(lock_path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.step(f"waiting for another build of environment {spec.hash}")
                fcntl.flock(handle, fcntl.LOCK_EX)
            log.lock_fd = handle.fileno()
            # No explicit LOCK_UN: it would also unlock for children still sharing the descriptor;
            # closing the file releases the lock once the last holder is gone.
            try:
                yield
            finally:
                log.lock_fd = None

    def _sweep_leftovers(self, spec: EnvSpec, log: _BuildLog) -> None:
        # Safe only under the lock: nobody else can be building this hash right now.
        for stale in self.envs_dir.glob(f".building-{spec.hash}-*"):
            log.line(f"removing leftover of an interrupted build: {stale.name}")
            shutil.rmtree(stale, ignore_errors=True)
        final = self.env_path(spec)
        if final.exists() or final.is_symlink():
            log.line(f"removing unfinished environment {final.name} (no completion marker)")
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final, ignore_errors=True)
            else:
                final.unlink()

    def _write_marker(self, spec: EnvSpec, final: Path, python_request: str, seconds: float) -> None:
        marker = {
            "hash": spec.hash,
            "spec": asdict(spec),
            "python_request": python_request,
            "built_at": datetime.now(timezone.utc).isoformat(),
            "build_seconds": round(seconds, 3),
        }
        tmp_marker = final / f"{MARKER_NAME}.tmp"
        tmp_marker.write_text(json.dumps(marker, indent=2))
        os.replace(tmp_marker, final / MARKER_NAME)

    def uv_binary(self, log_path: Path) -> str:
        configured = self.settings.uv_bin
        if configured:
            found = configured if os.path.sep in configured else shutil.which(configured)
            if found and os.access(found, os.X_OK):
                return found
            raise EnvBuildError(f"uv binary {configured!r} (MODELSERVE_UV_BIN) not found", log_path)
        beside = Path(sys.executable).parent / "uv"
        if os.access(beside, os.X_OK):
            return str(beside)
        found = shutil.which("uv")
        if found:
            return found
        raise EnvBuildError(
            "uv not found beside this Python or on PATH; install it (pip install uv) "
            "or set MODELSERVE_UV_BIN",
            log_path,
        )


def interpreter_prefix(python: Path) -> Path:
    """The installation an environment's python belongs to (what its ``pyvenv.cfg`` points at)."""
    real = python.resolve()
    return real.parent.parent if real.parent.name == "bin" else real.parent


def _local_requirements(cmd: list[str], models_dir: Path) -> list[Path]:
    """The local archives an install command's requirement and constraint files name (a model's
    bundled sdists and wheels, made absolute by ``_absolutize_local``): what the boxed install
    must read. Only files of the models dir: a line naming any other file of this machine is
    not offered to the box (uv then reports it missing)."""
    root = models_dir.resolve()
    out = []
    for f in (Path(cmd[i + 1]) for i, a in enumerate(cmd[:-1]) if a in ("-r", "-c")):
        for line in f.read_text().splitlines():
            candidate = Path(line.partition(";")[0].strip())
            if candidate.is_absolute() and candidate.exists() and root in candidate.resolve().parents:
                out.append(candidate.resolve())
    return out


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _BuildLog:
    """One build's log: timestamped lines appended to the file, step summaries echoed to
    `progress`, and the fd of the per-hash lock that build commands must inherit."""

    def __init__(self, path: Path, progress: Callable[[str], None] | None) -> None:
        self.path = path
        self.progress = progress
        self.lock_fd: int | None = None  # the held per-hash flock, while building

    def line(self, text: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with open(self.path, "a") as out:
            out.write(f"[{stamp}] {text}\n")

    def step(self, summary: str) -> None:
        self.line(f"==> {summary}")
        if self.progress:
            self.progress(summary)

    def flush_offset(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def tail_since(self, offset: int) -> str:
        with open(self.path, "rb") as src:
            src.seek(offset)
            text = src.read().decode(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return "\n".join(lines[-ERROR_TAIL_LINES:])
