"""The bubblewrap command line a model's box starts with, as a pure function (nothing runs here).

Why bubblewrap: it gives every namespace a box needs in one small program that works both for
root and for an ordinary user (unprivileged user namespaces), on Debian as a package.

* **Files.** A new, empty root: the system's read-only base (``/usr``, ``/etc`` and the merged-usr
  links), a fresh ``/proc`` (of its own PID namespace) and minimal ``/dev``, size-capped tmpfs
  ``/tmp`` and ``/dev/shm``, then only the paths the box is given, each at its own path
  (environments keep their absolute paths, ``pyvenv.cfg`` included): read-only ones (interpreter,
  environments, the model's files, the host's code, the spec) and writable ones (its state dir,
  its socket dir). The rest of the data dir (the store, ``auth/``, MLflow's data, the logs,
  every other model's files and state) simply does not exist inside.
* **Processes, IPC, network, hostname.** Own namespaces: it sees and signals only its own
  processes, and without network it has a loopback of its own with nothing on it.
* **Identity.** As root, bubblewrap binds as root (so root-only paths such as ``/root/.pyenv``
  can be offered read-only) and ``setpriv`` drops to the model's own uid/gid, with no
  supplementary groups, an empty capability bounding set and ``no_new_privs``, before the
  first line of the box's own code. As an ordinary user, bubblewrap's user namespace maps that
  user, with no capabilities.
* **Environment.** Cleared: the box gets a fixed, secret-free set of variables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from supervisor.isolation.box import Box

SYSTEM_READONLY = ("/usr", "/etc")
MERGED_USR = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
HOSTNAME = "modelserve-box"
BOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",  # environments are read-only inside
    "MPLCONFIGDIR": "/tmp/matplotlib",
}


def _system_args() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_READONLY:
        args += ["--ro-bind", path, path]
    for path in MERGED_USR:
        p = Path(path)
        if p.is_symlink():
            args += ["--symlink", str(p.readlink()), path]
        elif p.is_dir():
            args += ["--ro-bind", path, path]
    return args


def _mount_args(readonly: Iterable[Path], writable: Iterable[Path]) -> list[str]:
    """Each path bound at itself, parents first; the empty directories leading to a path that no
    other bind provides are made (0755) so the box's user can walk to it."""
    mounts = {Path(p): "--ro-bind" for p in readonly}
    mounts.update({Path(p): "--bind" for p in writable})
    args: list[str] = []
    bound: list[Path] = []
    made: set[Path] = set()
    for path in sorted(mounts, key=lambda p: (len(p.parts), str(p))):
        if any(path == b for b in bound):
            continue
        for parent in reversed(path.parents):
            if parent == Path("/") or parent in made or any(parent == b or b in parent.parents for b in bound):
                continue
            args += ["--perms", "0755", "--dir", str(parent)]
            made.add(parent)
        args += [mounts[path], str(path), str(path)]
        bound.append(path)
    return args


def command(box: Box, *, root: bool, readonly: Sequence[Path], writable: Sequence[Path], workdir: Path,
            argv: Sequence[str], bwrap: str = "bwrap", setpriv: str = "/usr/bin/setpriv",
            env: Mapping[str, str] | None = None) -> list[str]:
    """The argv that runs ``argv`` inside ``box``, with ``BOX_ENV`` and ``env`` as its variables."""
    if root:
        # No user namespace: setpriv below drops to the model's uid, which a namespace of root's
        # would not even map.
        spaces = ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        if not box.network:
            spaces.append("--unshare-net")
    else:
        spaces = ["--unshare-all", *(["--share-net"] if box.network else [])]
    args = [bwrap, *spaces, "--hostname", HOSTNAME, "--new-session", *_system_args(),
            "--proc", "/proc", "--dev", "/dev", "--size", str(box.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp",
            # POSIX semaphores and shared memory (joblib, multiprocessing) live here; the same cap.
            "--size", str(box.tmp_bytes), "--perms", "1777", "--tmpfs", "/dev/shm",
            *_mount_args(readonly, writable), "--chdir", str(workdir), "--clearenv"]
    for key, value in {**BOX_ENV, **(env or {})}.items():
        args += ["--setenv", key, value]
    args.append("--")
    if root:
        if box.uid is None or box.gid is None:
            raise ValueError("a box started by root needs the model's own uid and gid")
        args += [setpriv, f"--reuid={box.uid}", f"--regid={box.gid}", "--clear-groups", "--inh-caps=-all",
                 "--bounding-set=-all", "--no-new-privs", "--"]
    return args + list(argv)
