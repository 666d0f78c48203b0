"""Environment specs from model files, and real uv builds into a session-wide cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from supervisor.envs import (
    MARKER_NAME,
    EnvBuilder,
    EnvBuildError,
    EnvSpec,
    EnvSpecError,
    read_env_spec,
)
from supervisor.settings import Settings

PY = ".".join(str(p) for p in sys.version_info[:3])
# mlflow-skinny alone lacks numpy/pandas, which mlflow.pyfunc imports at module level.
TINY_REQS = ("mlflow-skinny==3.17.2", "numpy", "pandas")


def write(model_dir: Path, files: dict[str, str]) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / name).write_text(textwrap.dedent(text).lstrip())
    return model_dir


PYTHON_ENV = """
    python: 3.11.7
    build_dependencies:
    - pip==23.2.1
    - setuptools==65.5.0
    - wheel
    dependencies:
    - -r requirements.txt
"""
REQUIREMENTS = """
    # written by mlflow
    mlflow==3.17.2
    cloudpickle==3.1.3  # pickler

    scikit-learn==1.9.1
"""
CONDA = """
    channels:
    - conda-forge
    dependencies:
    - python=3.10.4
    - pip<=23.2.1
    - pip:
      - mlflow==3.17.2
      - pandas==3.1.1
    name: mlflow-env
"""
MLMODEL = """
    flavors:
      python_function:
        env:
          conda: conda.yaml
          virtualenv: python_env.yaml
        loader_module: mlflow.sklearn
        python_version: 3.9.18
"""


# ---------------------------------------------------------------------------------------------
# read_env_spec
# ---------------------------------------------------------------------------------------------


def test_python_env_yaml_with_requirements(tmp_path: Path) -> None:
    model = write(
        tmp_path / "m",
        {"python_env.yaml": PYTHON_ENV, "requirements.txt": REQUIREMENTS, "conda.yaml": CONDA},
    )
    spec = read_env_spec(model)
    assert spec.source == "python_env.yaml"
    assert spec.python == "3.11.7"
    assert spec.requirements == ("mlflow==3.17.2", "cloudpickle==3.1.3", "scikit-learn==1.9.1")
    assert spec.build_dependencies == ("pip==23.2.1", "setuptools==65.5.0", "wheel")
    assert spec.constraints == ()


def test_constraints_are_kept_apart_and_hashed(tmp_path: Path) -> None:
    model = write(
        tmp_path / "m",
        {
            "python_env.yaml": PYTHON_ENV,
            "requirements.txt": "mlflow==3.17.2\n-c constraints.txt\n",
            "constraints.txt": "numpy<2\n",
        },
    )
    spec = read_env_spec(model)
    assert spec.requirements == ("mlflow==3.17.2",)
    assert spec.constraints == ("numpy<2",)
    (model / "constraints.txt").write_text("numpy<3\n")
    assert read_env_spec(model).hash != spec.hash


def test_include_outside_model_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("x\n")
    model = write(tmp_path / "m", {"requirements.txt": "-r ../secret.txt\n"})
    with pytest.raises(EnvSpecError, match="outside the model directory"):
        read_env_spec(model)


def test_conda_yaml_only(tmp_path: Path) -> None:
    model = write(tmp_path / "m", {"conda.yaml": CONDA})
    spec = read_env_spec(model)
    assert spec.source == "conda.yaml"
    assert spec.python == "3.10.4"
    assert spec.requirements == ("mlflow==3.17.2", "pandas==3.1.1")


def test_conda_only_dependency_is_named(tmp_path: Path) -> None:
    conda = CONDA.replace("    - pip<=23.2.1\n", "    - pip<=23.2.1\n    - cudatoolkit=11.8\n")
    model = write(tmp_path / "m", {"conda.yaml": conda})
    with pytest.raises(EnvSpecError, match="conda-only dependency 'cudatoolkit=11.8'.*uv"):
        read_env_spec(model)


def test_python_version_falls_back_to_mlmodel(tmp_path: Path) -> None:
    conda = CONDA.replace("    - python=3.10.4\n", "")
    model = write(tmp_path / "m", {"conda.yaml": conda, "MLmodel": MLMODEL})
    assert read_env_spec(model).python == "3.9.18"


def test_requirements_txt_alone_uses_current_python(tmp_path: Path) -> None:
    model = write(tmp_path / "m", {"requirements.txt": REQUIREMENTS})
    spec = read_env_spec(model)
    assert spec.source == "requirements.txt"
    assert spec.python == PY
    assert spec.requirements[0] == "mlflow==3.17.2"


def test_no_env_file_is_an_error(tmp_path: Path) -> None:
    model = write(tmp_path / "m", {"MLmodel": MLMODEL})
    with pytest.raises(EnvSpecError, match="no python_env.yaml, conda.yaml or requirements.txt"):
        read_env_spec(model)


def test_bad_yaml_is_an_error(tmp_path: Path) -> None:
    model = write(tmp_path / "m", {"python_env.yaml": "python: [3.11\n"})
    with pytest.raises(EnvSpecError, match="not valid YAML"):
        read_env_spec(model)


def test_hash_depends_on_content_only(tmp_path: Path) -> None:
    a = write(tmp_path / "a", {"python_env.yaml": PYTHON_ENV, "requirements.txt": REQUIREMENTS})
    # Same requirements, different comments and blank lines: same environment.
    b = write(
        tmp_path / "b",
        {
            "python_env.yaml": PYTHON_ENV,
            "requirements.txt": "mlflow==3.17.2\n\n# c\ncloudpickle==3.1.3\nscikit-learn==1.9.1 # x\n",
        },
    )
    c = write(
        tmp_path / "c",
        {"python_env.yaml": PYTHON_ENV, "requirements.txt": REQUIREMENTS.replace("1.9.1", "1.9.0")},
    )
    assert read_env_spec(a).hash == read_env_spec(b).hash
    assert read_env_spec(a).hash != read_env_spec(c).hash
    assert len(read_env_spec(a).hash) == 16


# ---------------------------------------------------------------------------------------------
# EnvBuilder with real uv
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("modelserve-data"))


@pytest.fixture(scope="session")
def builder(settings: Settings) -> EnvBuilder:
    return EnvBuilder(settings)


def spec_of(*reqs: str, python: str = PY, build: tuple[str, ...] = ()) -> EnvSpec:
    return EnvSpec(python=python, requirements=reqs, build_dependencies=build, source="requirements.txt")


def leftovers(settings: Settings, spec: EnvSpec) -> list[Path]:
    return list(settings.envs_dir.glob(f".building-{spec.hash}-*"))


def test_build_then_reuse(builder: EnvBuilder, tmp_path: Path) -> None:
    spec = spec_of(*TINY_REQS, build=("pip==23.2.1",))
    steps: list[str] = []
    python = builder.build(spec, tmp_path / "first.log", steps.append)
    assert python == builder.python_of(spec) and python.exists()
    assert builder.is_built(spec)
    out = subprocess.run(
        # orjson is added to every environment for the scoring server's JSON.
        [str(python), "-c", "import mlflow, orjson, sys; print(mlflow.__version__, sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split()[0] == "3.17.2"
    assert Path(out.stdout.split()[1]).resolve() == builder.env_path(spec).resolve()
    assert any("installing 3 requirements" in s for s in steps)
    first_log = (tmp_path / "first.log").read_text()
    assert "skipping build_dependencies (pip==23.2.1)" in first_log
    assert "step 3/3" in first_log

    started = time.monotonic()
    again = builder.build(spec, tmp_path / "second.log")
    assert again == python
    # The log shows it was reused; how fast that was is a figure, not a pass mark.
    print(f"\nreusing the built environment took {time.monotonic() - started:.2f} s")
    assert f"reusing cached environment {spec.hash}" in (tmp_path / "second.log").read_text()


def test_unresolvable_requirement(builder: EnvBuilder, settings: Settings, tmp_path: Path) -> None:
    spec = spec_of("this-package-does-not-exist-modelserve==1.0")
    log = tmp_path / "bad.log"
    with pytest.raises(EnvBuildError) as info:
        builder.build(spec, log)
    assert info.value.log_path == log
    # The message ends with uv's own words about the package (uv wraps them at its own width).
    assert "this-package-does-not-exist-modelserve" in str(info.value).split("No solution found")[-1]
    assert "No solution found" in str(info.value)
    assert "No solution found" in log.read_text()
    assert not builder.env_path(spec).exists()
    assert leftovers(settings, spec) == []
    assert not builder.is_built(spec)


def test_unavailable_python(builder: EnvBuilder, settings: Settings, tmp_path: Path) -> None:
    spec = spec_of("six", python="2.7.1")
    with pytest.raises(EnvBuildError, match="Python 2.7.1 is not available on this host"):
        builder.build(spec, tmp_path / "py27.log")
    assert not builder.env_path(spec).exists()
    assert leftovers(settings, spec) == []


def test_patch_fallback_and_smoke_check(builder: EnvBuilder, settings: Settings, tmp_path: Path) -> None:
    # An unknown patch release falls back to the same minor version; an env without mlflow
    # then fails the smoke import.
    minor = ".".join(str(p) for p in sys.version_info[:2])
    spec = spec_of("six", python=f"{minor}.99")
    log = tmp_path / "fallback.log"
    with pytest.raises(EnvBuildError, match="environment has no usable mlflow"):
        builder.build(spec, log)
    text = log.read_text()
    assert f"WARNING: Python {minor}.99 is not available" in text
    assert f"falling back to Python {minor}" in text
    assert "No module named 'mlflow'" in text
    assert leftovers(settings, spec) == [] and not builder.env_path(spec).exists()


def test_timeout_kills_the_step(settings: Settings, tmp_path: Path) -> None:
    quick = EnvBuilder(settings.model_copy(update={"build_timeout": 0.001}))
    spec = spec_of("six", build=("timeout",))
    with pytest.raises(EnvBuildError, match="build timed out after 0.001 s"):
        quick.build(spec, tmp_path / "timeout.log")
    assert leftovers(settings, spec) == [] and not quick.env_path(spec).exists()


def test_leftovers_of_a_dead_build_are_not_reused(
    builder: EnvBuilder, settings: Settings, tmp_path: Path
) -> None:
    spec = spec_of(*TINY_REQS, build=("stale",))
    stale = settings.envs_dir / f".building-{spec.hash}-dead"
    (stale / "bin").mkdir(parents=True)
    unmarked = builder.env_path(spec)
    (unmarked / "bin").mkdir(parents=True)
    (unmarked / "bin" / "python").symlink_to(sys.executable)
    assert not builder.is_built(spec)
    builder.build(spec, tmp_path / "stale.log")
    assert builder.is_built(spec)
    assert not stale.exists()
    assert "removing leftover of an interrupted build" in (tmp_path / "stale.log").read_text()


def test_build_killed_midway(builder: EnvBuilder, settings: Settings, tmp_path: Path) -> None:
    spec = spec_of(*TINY_REQS, build=("killed",))
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from supervisor.envs import EnvBuilder, EnvSpec
        from supervisor.settings import Settings
        spec = EnvSpec(python={spec.python!r}, requirements={spec.requirements!r},
                       build_dependencies={spec.build_dependencies!r}, source="requirements.txt")
        EnvBuilder(Settings(data_dir=Path({str(settings.data_dir)!r}))).build(spec, Path({str(tmp_path / "k.log")!r}))
        """
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    # A new Python importing the supervisor, then uv starting: far from instant on a loaded machine.
    deadline = time.monotonic() + 120
    while not leftovers(settings, spec) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert leftovers(settings, spec), "the build never started"
    assert not builder.is_built(spec)
    builder.build(spec, tmp_path / "after-kill.log")
    assert builder.is_built(spec)
    assert leftovers(settings, spec) == []


def test_concurrent_builds_of_one_hash_build_once(builder: EnvBuilder, tmp_path: Path) -> None:
    spec = spec_of(*TINY_REQS, build=("concurrent",))
    results: dict[int, Path] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = builder.build(spec, tmp_path / f"c{i}.log")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results[0] == results[1]
    logs = [(tmp_path / f"c{i}.log").read_text() for i in range(2)]
    assert sum("step 1/3" in log for log in logs) == 1
    assert builder.is_built(spec)
    assert (builder.env_path(spec) / MARKER_NAME).is_file()


def test_a_build_step_killed_from_outside_says_so(settings: Settings, tmp_path: Path) -> None:
    # A uv that dies of SIGKILL (the out-of-memory killer, an operator) prints no reason of its
    # own: the error must name the signal, and no fallback Python is tried after it.
    killer = tmp_path / "uv"
    killer.write_text("#!/bin/sh\nkill -9 $$\n")
    killer.chmod(0o755)
    spec = spec_of("six", python=f"{PY}", build=("killed-by-signal",))
    doomed = EnvBuilder(settings.model_copy(update={"uv_bin": str(killer)}))
    log = tmp_path / "killed.log"
    with pytest.raises(EnvBuildError, match="uv was killed by SIGKILL") as info:
        doomed.build(spec, log)
    assert "falling back" not in log.read_text()
    assert "uv was killed by SIGKILL" in log.read_text()
    assert "creating the virtualenv failed" in str(info.value)
    assert leftovers(settings, spec) == [] and not doomed.is_built(spec)
