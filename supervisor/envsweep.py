"""Sweep away environment builds that nobody will finish, once, when the reconciler starts.

Why it exists: a build that dies with its process (the reconciler SIGKILLed, the machine
rebooted) leaves ``envs_dir/.building-<hash>-<random>`` behind, or, killed between the rename and
the marker, an unmarked ``envs_dir/<hash>``. Neither is ever taken for a usable environment
(``EnvBuilder.is_built`` wants the marker) and the next build of the *same* hash sweeps them, but a
hash that is never built again (its version archived meanwhile) would keep its leftovers, some
hundreds of megabytes each, forever.

Why it is safe: a leftover is removed only while its hash's build lock (``<hash>.lock``, the same
``flock`` the builder takes) is held by the sweep. A build still running, or an orphaned uv that
inherited the lock from a killed reconciler and is still writing, holds that lock, so its folder
is left alone; the build that later takes the lock sweeps it itself.

Plan and apply are apart: ``leftovers`` only reads the folder listing; ``sweep`` removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from supervisor.envs import MARKER_NAME

_BUILDING_RE = re.compile(r"^\.building-([0-9a-f]{16})-[0-9a-f]+$")
_HASH_RE = re.compile(r"^[0-9a-f]{16}$")


def leftovers(envs_dir: Path) -> dict[str, list[Path]]:
    """Per environment hash, the folders no finished build owns: ``.building-*`` folders and
    environments without their completion marker. Reads the listing only."""
    found: dict[str, list[Path]] = {}
    if not envs_dir.is_dir():
        return found
    for path in sorted(envs_dir.iterdir()):
        building = _BUILDING_RE.match(path.name)
        if building:
            found.setdefault(building.group(1), []).append(path)
        elif _HASH_RE.match(path.name) and path.is_dir() and not (path / MARKER_NAME).is_file():
            found.setdefault(path.name, []).append(path)
    return found


@contextlib.contextmanager
def _unless_building(envs_dir: Path, env_hash: str) -> Iterator[bool]:
    """True (and the hash locked until the block ends) when no build holds the hash's lock."""
    with open(envs_dir / f"{env_hash}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def sweep(envs_dir: Path, say: Callable[[str], None] = lambda _line: None) -> list[Path]:
    """Remove the leftovers of builds that are no longer running; return what was removed."""
    removed: list[Path] = []
    for env_hash, paths in leftovers(envs_dir).items():
        with _unless_building(envs_dir, env_hash) as free:
            if not free:
                say(f"environment {env_hash} is being built by another process; its folders are left to it")
                continue
            for path in paths:
                # Checked again under the lock: a build may have finished since the listing.
                if path.name == env_hash and (path / MARKER_NAME).is_file():
                    continue
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
                say(f"removed the leftover of an interrupted environment build: {path.name}")
    return removed
