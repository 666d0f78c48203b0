"""Dockerfiles and build contexts of the docker runtime, rendered without a Docker engine."""

from __future__ import annotations

import tarfile
from io import BytesIO
from pathlib import Path

import pytest

from supervisor.envs import EnvSpec
from supervisor.runtime.images import (
    ImageBuildError,
    build_image,
    env_context,
    index_build_args,
    model_context,
    model_image_versions,
    render_env_build,
    render_model_dockerfile,
)

BASE = "modelserve-base:bookworm"


def spec(*reqs: str, python: str = "3.11.7") -> EnvSpec:
    return EnvSpec(python=python, requirements=reqs, build_dependencies=(), source="python_env.yaml")


def test_index_settings_pass_as_build_args_but_host_file_indexes_do_not(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("cert")
    args = index_build_args({"PIP_INDEX_URL": "https://pypi.example/simple", "PIP_CERT": str(ca),
                             "PIP_EXTRA_INDEX_URL": "file:///opt/pypi/simple"})
    assert args["UV_INDEX_URL"] == args["PIP_INDEX_URL"] == "https://pypi.example/simple"
    assert "PIP_EXTRA_INDEX_URL" not in args and "UV_EXTRA_INDEX_URL" not in args
    assert args["SSL_CERT_FILE"].startswith("/tmp/modelserve-build/")
    build = render_env_build(spec("mlflow==3.17.2"), BASE, {"PIP_INDEX_URL": "https://pypi.example/simple",
                                                            "PIP_CERT": str(ca)})
    assert build.dockerfile.startswith("#") and f"FROM {BASE}" in build.dockerfile
    assert "ARG UV_INDEX_URL" in build.dockerfile and "ARG SSL_CERT_FILE" in build.dockerfile
    assert "pypi.example" not in build.dockerfile  # a build argument, never stored in the image
    with tarfile.open(fileobj=BytesIO(env_context(build, ca, ca))) as tar:
        assert "build/ca-bundle.crt" in tar.getnames()


def test_env_script_falls_back_to_the_minor_version_and_inlines_no_host_paths(tmp_path: Path) -> None:
    wheel = tmp_path / "wheels" / "mypkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"wheel")
    build = render_env_build(spec("mlflow==3.17.2", str(wheel)), BASE, {})
    assert "--python 3.11.7" in build.script and "--python 3.11 " in build.script
    assert str(tmp_path) not in build.requirements
    assert "/tmp/modelserve-build/files/0-mypkg-1.0-py3-none-any.whl" in build.requirements
    with tarfile.open(fileobj=BytesIO(env_context(build, wheel, None))) as tar:
        assert "build/files/0-mypkg-1.0-py3-none-any.whl" in tar.getnames()
    assert "--python" in render_env_build(spec(python=">=3.9"), BASE, {}).script


def test_a_new_version_only_appends_layers_and_shared_environments_are_copied_once(tmp_path: Path) -> None:
    two = model_image_versions([("2", "e1", tmp_path), ("1", "e1", tmp_path)], BASE)
    three = model_image_versions([("1", "e1", tmp_path), ("2", "e1", tmp_path), ("10", "e2", tmp_path)], BASE)
    assert [v.version for v in three] == ["1", "2", "10"]  # numeric order, not text order
    assert [bool(v.env_image) for v in three] == [True, False, True]
    before = render_model_dockerfile(BASE, two)
    after = render_model_dockerfile(BASE, three)
    # Everything up to the last version's files is identical, so Docker reuses those layers.
    prefix = before[: before.index("LABEL")]
    assert after.startswith(prefix)
    assert after.count("COPY --from=") == 2


def test_build_contexts_are_byte_identical_for_identical_content(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "MLmodel").write_text("flavors: {}")
    layers = model_image_versions([("1", "e1", model)], BASE)
    first = model_context(render_model_dockerfile(BASE, layers), layers)
    (model / "MLmodel").touch()  # a new mtime, same content
    assert model_context(render_model_dockerfile(BASE, layers), layers) == first
    with tarfile.open(fileobj=BytesIO(first)) as tar:
        names = tar.getnames()
    assert {"Dockerfile", "modelserve/modelhost.py", "modelserve/server.py", "models/1/MLmodel"} <= set(names)


class FakeApi:
    """The engine's build stream as the legacy builder sends it: pieces of lines, stderr in colour."""

    def __init__(self, chunks: list[dict[str, str]]) -> None:
        self.chunks = chunks

    def build(self, **kwargs: object) -> list[dict[str, str]]:
        assert kwargs["network_mode"] == "host" and kwargs["custom_context"] is True
        return self.chunks


def test_build_output_goes_to_the_log_in_whole_clean_lines(tmp_path: Path) -> None:
    log = tmp_path / "1.build.log"
    seen: list[str] = []
    chunks = [{"stream": "Step 6/7 : RUN sh build-env.sh\n"}, {"stream": "==> modelserve: step 2/3: ins"},
              {"stream": "talling 7 requirements\n"}, {"stream": "\x1b[91merror\x1b[0m"},
              {"stream": "\x1b[91m: No solution found\n\x1b[0m"},
              {"error": "The command returned a non-zero code: 1", "stream": ""}]
    with pytest.raises(ImageBuildError) as failed:
        build_image(FakeApi(chunks), b"", "modelserve-env:x", log, progress=seen.append)
    assert seen == ["step 2/3: installing 7 requirements"]
    text = log.read_text()
    assert "\x1b" not in text and "error: No solution found" in text
    assert "error: No solution found" in str(failed.value) and "non-zero code" in str(failed.value)
