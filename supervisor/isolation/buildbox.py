"""Where an environment build runs the code of the packages it installs.

Installing a wheel runs none of its code: uv unpacks it. Building one from source does (an
sdist's ``setup.py``, any build backend), and so does the environment's own Python, which runs
every installed ``.pth`` file as it starts. So a build is split by trust (``envs.py``):

* **Outside any box**, as the supervisor: ``uv venv`` and a wheels-only install
  (``--no-build``) with the shared download cache. No package code runs, and a model's second
  environment costs no download.
* **In the model's box**, only when a requirement must be built from source: the same install,
  allowed to build, as the model's own uid (as root) with no capabilities and ``no_new_privs``,
  in a new root that has the system's read-only base, the interpreter, uv and the requirement
  files read-only, and writable only the environment being built and a download cache of its
  own, thrown away after. It needs the package index, so it has network, kept off this
  machine's loopback like a network-enabled model (``netguard.py``; as root only). Its
  variables are a fixed set plus the index settings: no secret of the supervisor's.
* **In the model's box without network**: the smoke check, the environment's first Python.

The environment is handed to the box's uid for the boxed step and back to root after it (links
never followed), so no model can later change an environment another one shares.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from supervisor.isolation import sandbox
from supervisor.isolation.box import Box

# What a build may still learn of the supervisor's environment: where the package index is and
# how to reach it. Nothing else (credentials for the registry, the admin password) is passed.
_PASSED_PREFIXES = ("UV_", "PIP_")
_PASSED = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy",
           "all_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NO_COLOR")
# uv's own settings that would point it outside the box or at the supervisor's files.
_NOT_PASSED = ("UV_CACHE_DIR", "UV_CONFIG_FILE", "UV_PYTHON_INSTALL_DIR", "UV_TOOL_DIR", "UV_PROJECT_ENVIRONMENT")


def build_env(tool_env: Mapping[str, str]) -> dict[str, str]:
    """The variables a boxed build step gets from the supervisor's ``tool_env``."""
    return {k: v for k, v in tool_env.items()
            if (k in _PASSED or k.startswith(_PASSED_PREFIXES)) and k not in _NOT_PASSED
            and "PASSWORD" not in k and "TOKEN" not in k and "SECRET" not in k}


def _files_of(env: Mapping[str, str]) -> list[Path]:
    """Local paths the index settings name (find-links dirs, CA bundles): offered read-only."""
    out = []
    for key in ("UV_FIND_LINKS", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        for part in env.get(key, "").replace(",", " ").split():
            p = Path(part)
            if p.is_absolute() and p.exists():
                out.append(p.resolve())
    return out


@dataclass(frozen=True)
class BuildBox:
    box: Box  # the model's: its uid/gid and tmp cap (network is set per step)
    root: bool
    uv: Path
    bwrap: str = "bwrap"

    def command(self, argv: Sequence[str], *, readonly: Iterable[Path], writable: Sequence[Path], workdir: Path,
                network: bool, env: Mapping[str, str]) -> list[str]:
        """``argv`` inside the box: the system base, ``readonly`` and uv read-only, ``writable`` writable."""
        ro = {Path(p).resolve() for p in readonly} | {self.uv.resolve(), *_files_of(env)}
        # Inside /usr and /etc already (the system base): binding them again would only shadow it.
        ro = {p for p in ro if not any(p == Path(s) or Path(s) in p.parents for s in sandbox.SYSTEM_READONLY)}
        box = replace(self.box, network=network)
        return sandbox.command(box, root=self.root, readonly=sorted(ro), writable=list(writable), workdir=workdir,
                               argv=argv, bwrap=self.bwrap, env=env)

    def give(self, paths: Iterable[Path]) -> None:
        """Make ``paths`` (trees) the box's to write, for the boxed step."""
        if self.root and self.box.uid is not None:
            for p in paths:
                _chown_tree(p, self.box.uid, self.box.gid if self.box.gid is not None else self.box.uid)

    def take_back(self, paths: Iterable[Path]) -> None:
        """Make ``paths`` root's again: nothing the box wrote stays writable by any model."""
        if self.root:
            for p in paths:
                _chown_tree(p, 0, 0)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    # lchown throughout: a link the build left behind is changed itself, never what it names.
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
