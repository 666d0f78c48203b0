"""A real three-node Docker Swarm on this one machine, for the swarm runtime's end-to-end test.

Why it is built this way (the facts are in issue 13):

* **One network namespace per node**, joined to a bridge on the host by a veth pair, so every node
  has an address of its own and the host (where the test's supervisor and gateway run) reaches
  each node's host-mode published ports directly. Names carry a prefix made of this process's
  pid (``mssw<pid>``), so parallel runs and the shared engine never meet.
* **Each engine is started with ``nsenter --net=``**, not ``ip netns exec`` (which remounts /sys
  and hides the cgroup mounts), with a data root, exec root, pidfile and socket of its own, and
  ``--insecure-registry`` for the registry.
* **The registry is Debian's ``docker-registry``** (Distribution 2.8) on the host, listening on
  every address at one free port: the nodes pull through the bridge address, while the shared
  engine (which builds the images from what it already has cached) pushes through 127.0.0.1,
  which Docker always treats as insecure. Both names reach the same repository.
* **The shared engine's iptables FORWARD policy (DROP) would drop the frames between the nodes**
  (bridged traffic passes through iptables): one ACCEPT rule for this bridge, removed at the end.
* **Torn down by pid and by name**: engines (their pidfiles), registry (its pid), namespaces,
  veths and bridge; files last.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import wait_until

TMPFS_SIZE = "6g"  # three engines with one model image each (about 0.9 GB), the registry, headroom


def run(*args: str, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {out.returncode}: {out.stderr.strip()[-2000:]}")
    return out.stdout.strip()


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def free_subnet() -> str:
    """A /24 in 10.213.0.0/16 that no route of the host's uses yet (three octets)."""
    routes = run("ip", "-4", "route")
    for n in range(os.getpid() % 200, os.getpid() % 200 + 250):
        prefix = f"10.213.{n % 250 + 1}"
        if f"{prefix}." not in routes:
            return prefix
    raise RuntimeError("no free 10.213.x.0/24 subnet")


@dataclass
class Node:
    name: str  # the netns name
    address: str  # on the bridge
    root: Path  # data, exec root, pidfile, socket
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def docker(self, *args: str, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None) -> str:
        return run("docker", "-H", self.docker_host, *args, check=check, timeout=timeout, env=env)

    def engine_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


@dataclass
class Swarm:
    prefix: str
    subnet: str  # three octets
    root: Path
    registry_port: int
    nodes: list[Node] = field(default_factory=list)
    registry: subprocess.Popen[bytes] | None = None
    # The manager's engine also on TCP at its bridge address (the stack test's supervisor, in a
    # container, makes services through it); None: Unix socket only.
    manager_tcp_port: int | None = None

    @property
    def manager_tcp(self) -> str:
        assert self.manager_tcp_port is not None
        return f"tcp://{self.nodes[0].address}:{self.manager_tcp_port}"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def _forward_rule(self) -> tuple[str, ...]:
        return ("-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT")

    @property
    def host_address(self) -> str:
        return f"{self.subnet}.1"

    @property
    def registry_address(self) -> str:
        """What the nodes pull from."""
        return f"{self.host_address}:{self.registry_port}"

    @property
    def push_address(self) -> str:
        """What the host's engine pushes to (loopback: insecure without configuring it)."""
        return f"127.0.0.1:{self.registry_port}"

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    def node_by_hostname(self) -> dict[str, Node]:
        return {n.docker("info", "--format", "{{.Name}}"): n for n in self.nodes}

    # --- set-up --------------------------------------------------------------------------
    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # The engines' data roots and the registry in memory: three copies of a model image are
        # extracted there, and removing them from a disk took minutes on a loaded machine.
        run("mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", f"{self.prefix}fs", str(self.root))
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        # The shared engine's FORWARD policy is DROP and bridged frames pass through iptables
        # (br_netfilter): the nodes' traffic to one another is let through, by this bridge's name.
        # -w: the shared engine and the nodes' engines change iptables too, under one lock
        # (/run/xtables.lock, whatever the netns); without a wait a busy moment fails at once.
        run("iptables", "-w", "60", "-I", "FORWARD", *self._forward_rule)
        self._start_registry()
        for i in range(3):
            self.nodes.append(self._add_node(i))
        for node in self.nodes:
            # `docker info` prints the client's half even when no engine answers: ask for the
            # server's version, which is empty until the engine is up (CI failed on `swarm init`).
            wait_until(f"engine {node.name}", lambda n=node: _engine_answers(n), timeout=180, every=0.5)
        m = self.manager
        # A node that stops answering is declared down after a few heartbeats (5 s by default):
        # 2 s here, so the test waits less for Swarm to reschedule a lost node's tasks.
        m.docker("swarm", "init", "--advertise-addr", m.address, "--listen-addr", f"{m.address}:2377",
                 "--dispatcher-heartbeat", "2s")
        token = m.docker("swarm", "join-token", "-q", "worker")
        for node in self.nodes[1:]:
            node.docker("swarm", "join", "--token", token, "--advertise-addr", node.address,
                        "--listen-addr", f"{node.address}:2377", f"{m.address}:2377")
        wait_until("three ready nodes", lambda: m.docker("node", "ls", "--format", "{{.Status}}").split() ==
                   ["Ready"] * 3, timeout=90, every=0.5)

    def _start_registry(self) -> None:
        store = self.root / "registry"
        store.mkdir()
        config = self.root / "registry.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {store}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 0.0.0.0:{self.registry_port}\n")
        log = (self.root / "registry.log").open("wb")
        self.registry = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log,
                                         start_new_session=True)
        wait_until("the registry", lambda: _answers(self.host_address, self.registry_port), timeout=30)

    def _add_node(self, i: int) -> Node:
        name = f"{self.prefix}n{i}"
        node = Node(name, f"{self.subnet}.{i + 2}", self.root / name)
        node.root.mkdir()
        outside, inside = f"{self.prefix}v{i}", f"{self.prefix}p{i}"
        run("ip", "netns", "add", name)
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", outside, "master", self.bridge)
        run("ip", "link", "set", outside, "up")
        run("ip", "link", "set", inside, "netns", name)
        ns = ("ip", "-n", name)
        run(*ns, "link", "set", inside, "name", "eth0")
        run(*ns, "addr", "add", f"{node.address}/24", "dev", "eth0")
        run(*ns, "link", "set", "eth0", "up")
        run(*ns, "link", "set", "lo", "up")
        run(*ns, "route", "add", "default", "via", self.host_address)
        self.start_engine(node)
        return node

    def start_engine(self, node: Node) -> None:
        log = (node.root / "dockerd.log").open("ab")
        node.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{node.name}", "dockerd",
             "--data-root", str(node.root / "data"), "--exec-root", str(node.root / "exec"),
             "--pidfile", str(node.root / "dockerd.pid"), "-H", node.docker_host,
             "--containerd-namespace", node.name, "--containerd-plugins-namespace", f"{node.name}p",
             "--cgroup-parent", node.name, "--bridge", "none",
             "--insecure-registry", self.registry_address,
             *(["-H", f"tcp://{node.address}:{self.manager_tcp_port}"]
               if self.manager_tcp_port is not None and node.name.endswith("n0") else [])],
            stdout=log, stderr=log, start_new_session=True)

    def kill_engine(self, node: Node) -> None:
        """SIGKILL the node's engine (its containerd and containers are left as a crash leaves them)."""
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=30)

    # --- tear-down -----------------------------------------------------------------------
    def stop(self) -> None:
        for node in self.nodes:
            self._stop_engine(node)
        if self.registry is not None:
            _end(self.registry)
        for i, node in enumerate(self.nodes):
            run("ip", "netns", "del", node.name, check=False)
            run("ip", "link", "del", f"{self.prefix}v{i}", check=False)
        run("iptables", "-w", "60", "-D", "FORWARD", *self._forward_rule, check=False)
        run("ip", "link", "del", self.bridge, check=False)
        _unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    def _stop_engine(self, node: Node) -> None:
        if node.proc is not None and node.proc.poll() is None:
            # Its containers are killed first (an engine stopping gives each its grace period);
            # the swarm's state goes with the data root.
            with contextlib.suppress(Exception):
                ids = node.docker("ps", "-aq", check=False, timeout=30).split()
                if ids:
                    node.docker("rm", "-f", *ids, check=False, timeout=60)
            _end(node.proc)
        # The engine's containerd and shims (in the engine's process group): what its SIGKILL left.
        for pid in _pids_under(node.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Its containers' processes, should any outlive their shims (an engine that was killed and
        # not started again), and the cgroups the engine made (``--cgroup-parent`` = the node).
        groups = sorted(Path("/sys/fs/cgroup").glob(f"*/{node.name}"), key=str) + sorted(
            Path("/sys/fs/cgroup").glob(node.name), key=str)
        for group in groups:
            for procs in group.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    for pid in procs.read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
        for _ in range(40):  # killed processes leave their cgroup a moment later: bounded retries
            for group in groups:
                for d in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                                reverse=True):
                    with contextlib.suppress(OSError):
                        d.rmdir()
                with contextlib.suppress(OSError):
                    group.rmdir()
            if not any(g.exists() for g in groups):
                break
            time.sleep(0.25)


def _engine_answers(node: Node) -> bool:
    # A starting engine may hold the client past its timeout (a busy machine): "not yet".
    try:
        return node.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=10) != ""
    except subprocess.TimeoutExpired:
        return False


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _pids_under(root: Path) -> list[int]:
    """Processes whose command line names a path under ``root`` (a node's containerd and shims)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if str(root).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return [p for p in found if p != os.getpid()]


def _unmount_under(root: Path) -> None:
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            target = line.split()[1]
            if target == str(root) or target.startswith(f"{root}/"):
                mounts.append(target)
    for target in sorted(mounts, key=len, reverse=True):  # the deepest first, the tmpfs itself last
        run("umount", "-l", target, check=False)


@contextlib.contextmanager
def three_node_swarm(root: Path, manager_tcp: bool = False, prefix: str = "mssw") -> Iterator[Swarm]:
    prefix = f"{prefix}{os.getpid() % 100000}"
    swarm = Swarm(prefix, free_subnet(), root / prefix, free_tcp_port(),
                  manager_tcp_port=2375 if manager_tcp else None)
    try:
        swarm.start()
        yield swarm
    finally:
        swarm.stop()


if __name__ == "__main__":  # a manual check: python -m tests.e2e.swarm
    started = time.monotonic()
    with three_node_swarm(Path("/tmp")) as s:
        print(f"swarm up in {time.monotonic() - started:.1f} s")
        print(s.manager.docker("node", "ls"))
