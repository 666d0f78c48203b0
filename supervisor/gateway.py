"""Nginx, the gateway: render its configs, check them, swap them in atomically, reload gracefully.

The main config is rendered once at start; only ``routes.conf`` changes while running. A new
routes file is first written beside the live one and checked with ``nginx -t`` through a copy of
the main config that includes the candidate; only a config Nginx accepts replaces the live file
(``os.replace``, atomic), and Nginx is reloaded only when the text changed. ``nginx -s reload``
starts new workers and lets the old ones finish their requests, so no request in flight is lost.
Nginx always runs with our own prefix and config (``-p``/``-c``): nothing touches /etc/nginx.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jinja2

from supervisor import gatewaycontrol
from supervisor.endpoints.ratelimits import LimitZone, nginx_limits
from supervisor.routing import EndpointRoutes, ModelRoutes, render_routes
from supervisor.settings import Settings

log = logging.getLogger(__name__)

# What a Unix socket's path may hold (sockaddr_un's sun_path on Linux, its final NUL included).
SUN_PATH_MAX = 108


def nginx_cache_seconds(auth_cache_seconds: float) -> int:
    """Nginx's share of the access-decision cache time.

    Two caches stand in a row (Nginx's, then the API worker's cache of MLflow's answers), and
    Nginx counts in whole seconds (an entry valid for N s may serve up to N + 1 s): each gets
    half, so a removed permission stops working within about ``auth_cache_seconds``."""
    return 0 if auth_cache_seconds <= 0 else max(1, int(auth_cache_seconds / 2))


class GatewayConfigError(Exception):
    """Nginx refused a configuration; the message holds its own words."""


@dataclass(frozen=True)
class ApplyResult:
    changed: bool
    rejected: list[str] = field(default_factory=list)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Gateway:
    def __init__(self, settings: Settings, mlflow_upstream: str | None = None) -> None:
        self.settings = settings
        self.prefix = settings.nginx_dir
        self.main_conf = self.prefix / "nginx.conf"
        self.routes_conf = self.prefix / "routes.conf"
        self.pid_file = self.prefix / "nginx.pid"
        # The gateway's own 404/503 for scoring paths without a running version (nginx.conf.j2).
        self.gate_socket = self.prefix / "gate.sock"
        self.mlflow_upstream = mlflow_upstream or f"127.0.0.1:{settings.mlflow_port}"
        self._lock = threading.Lock()  # the reconciler's tick and its deploy threads both publish routes
        # Rate limits live in the main config (limit_req_zone in http, limit_req in a location):
        # one file, so a zone and the lines using it are always swapped in together. They are kept
        # beside it too, so the launcher's (re)start of Nginx renders the reconciler's limits.
        self.limits_file = self.prefix / "limits.json"
        # compose.yaml's (and a swarm stack's) supervisor: Nginx runs in the gateway container, in
        # a PID namespace of its own; that container's control socket reloads it (gatewaycontrol.py).
        self.control = self.prefix / "control.sock" if settings.compose else None

    def _render_main(self, routes_path: Path, limits: Sequence[LimitZone] | None = None) -> str:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(self.settings.nginx_templates)),
                                 autoescape=False, undefined=jinja2.StrictUndefined)
        # As root, Nginx would drop its workers to "nobody", who cannot read our data dir.
        user = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else ""
        if len(os.fsencode(str(self.gate_socket))) >= SUN_PATH_MAX:
            raise GatewayConfigError(f"The data dir's path is too long for the gateway's Unix socket "
                                     f"{self.gate_socket} (at most {SUN_PATH_MAX - 1} bytes): choose a "
                                     "shorter MODELSERVE_DATA_DIR")
        return env.get_template("nginx.conf.j2").render(
            user=user,
            prefix=str(self.prefix),
            host=self.settings.host,
            port=self.settings.port,
            ipv6=False,
            api_upstream=self.settings.api_upstream,
            mlflow_upstream=self.mlflow_upstream,
            max_body_mb=self.settings.max_body_mb,
            routes_path=str(routes_path),
            gate_socket=str(self.gate_socket),
            metrics_log=str(self.settings.metrics_log),
            capture_log=str(self.settings.capture_log),
            auth=self.settings.auth,
            auth_cache_seconds=nginx_cache_seconds(self.settings.auth_cache_seconds),
            limits=nginx_limits(self.limits() if limits is None else limits),
        )

    def _nginx(self, *args: str, conf: Path | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [self.settings.nginx_bin, "-p", f"{self.prefix}/", "-c", str(conf or self.main_conf), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    def _test(self, conf: Path) -> None:
        result = self._nginx("-t", "-q", conf=conf)
        if result.returncode != 0:
            raise GatewayConfigError(f"nginx -t refused the configuration:\n{result.stderr.strip()}")

    def _make_dirs(self) -> None:
        for sub in ("tmp/client_body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "tmp/auth_cache"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        # Cached access decisions are keyed by the credential itself: owner-only.
        (self.prefix / "tmp" / "auth_cache").chmod(0o700)

    def write_main(self) -> None:
        self._make_dirs()
        if not self.routes_conf.exists():
            _atomic_write(self.routes_conf, render_routes([], self.settings.nginx_templates).text)
        _atomic_write(self.main_conf, self._render_main(self.routes_conf))

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def _asked(self, command: str, timeout: float) -> bool:
        """Whether the gateway container's control socket carried out ``command``."""
        assert self.control is not None
        try:
            gatewaycontrol.call(self.control, command, timeout=timeout)
            return True
        except gatewaycontrol.GatewayControlError:
            return False

    def is_running(self) -> bool:
        if self.control is not None:
            return self._asked("ping", timeout=10)
        return self.pid() is not None

    def start(self) -> None:
        self.write_main()
        self._test(self.main_conf)
        if self.is_running():
            self.reload()
            return
        # A socket file left by an Nginx that was killed would keep the new one from binding.
        self.gate_socket.unlink(missing_ok=True)
        result = self._nginx()
        if result.returncode != 0:
            raise GatewayConfigError(f"nginx did not start:\n{result.stderr.strip()}")
        deadline = time.monotonic() + 10
        while not self.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)

    def attach(self, timeout: float, abort: Callable[[], bool] = lambda: False) -> None:
        """Configure an Nginx this process did not start (compose.yaml's gateway container): write
        the config, wait for that Nginx's control socket, then have it reload into the config."""
        self.write_main()
        self._test(self.main_conf)
        deadline = time.monotonic() + timeout
        while not self.is_running():
            if abort() or time.monotonic() > deadline:
                raise GatewayConfigError(f"no nginx answered at {self.control or self.pid_file} within "
                                         f"{timeout:.0f} s: is the gateway container running?")
            time.sleep(0.2)
        self.reload()

    def _workers(self, master: int) -> set[int]:
        try:
            kids = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except OSError:
            return set()
        return {int(k) for k in kids}

    @staticmethod
    def _accepting(pid: int) -> bool:
        """A worker that still takes new connections (not gone, not draining after a reload)."""
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return b"shutting down" not in title and b"worker" in title

    def reload(self, timeout: float = 60.0) -> None:
        """Reload and return only once every worker taking new connections runs the new config.

        ``nginx -s reload`` only sends a signal; until the master has started new workers and
        told the old ones to stop accepting, requests still meet the old routes. Waiting here
        lets callers announce a route (e.g. a version READY), or stop what a removed route led
        to, only when the change really is live. The bound is generous (a loaded machine can take
        seconds to start workers) and, when reached, said in the log rather than passed over."""
        if self.control is not None:
            try:
                gatewaycontrol.call(self.control, "reload", timeout=timeout + 30)
            except gatewaycontrol.GatewayControlError as exc:  # already "nginx reload failed: ..." or "did not answer"
                raise GatewayConfigError(str(exc)) from exc
            return
        master = self.pid()
        before = {w for w in self._workers(master) if self._accepting(w)} if master else set()
        result = self._nginx("-s", "reload")
        if result.returncode != 0:
            raise GatewayConfigError(f"nginx reload failed:\n{result.stderr.strip()}")
        if not master:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self._workers(master)
            new = {w for w in workers if w not in before and self._accepting(w)}
            if new and not any(self._accepting(w) for w in before):
                return
            time.sleep(0.02)
        log.warning("nginx had not switched to the new configuration %.0f s after the reload", timeout)

    def reopen_logs(self) -> bool:
        """Have Nginx flush and reopen its log files (after one was renamed); False if it could not."""
        if self.control is not None:
            return self._asked("reopen", timeout=60)
        return self.is_running() and self._nginx("-s", "reopen").returncode == 0

    def stop(self, timeout: float = 15.0) -> None:
        if self.control is not None:
            return  # the gateway container's: its engine stops it (`docker compose down`)
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGQUIT)  # graceful: finish requests in flight
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGTERM)

    def apply_routes(self, models: Sequence[ModelRoutes], endpoints: Sequence[EndpointRoutes] = (),
                     limits: Sequence[LimitZone] | None = None) -> ApplyResult:
        """Routes (and, unless None, the endpoints' rate limits) live at the gateway on return."""
        with self._lock:
            return self._apply_routes(models, endpoints, self.limits() if limits is None else tuple(limits))

    def limits(self) -> tuple[LimitZone, ...]:
        """The rate limits the main config was last rendered with."""
        try:
            return tuple(LimitZone(**{**z, "excluded": tuple(z["excluded"])})
                         for z in json.loads(self.limits_file.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            return ()

    def _apply_routes(self, models: Sequence[ModelRoutes], endpoints: Sequence[EndpointRoutes],
                      limits: tuple[LimitZone, ...]) -> ApplyResult:
        rendered = render_routes(models, self.settings.nginx_templates, endpoints)
        current = self.routes_conf.read_text() if self.routes_conf.exists() else None
        if rendered.text == current and limits == self.limits():
            return ApplyResult(changed=False, rejected=rendered.rejected)
        # The reconciler may render before the launcher has started Nginx: nginx -t needs these.
        self._make_dirs()
        candidate = self.prefix / "routes.conf.candidate"
        test_conf = self.prefix / "nginx.test.conf"
        _atomic_write(candidate, rendered.text)
        _atomic_write(test_conf, self._render_main(candidate, limits))
        try:
            self._test(test_conf)
        finally:
            test_conf.unlink(missing_ok=True)
        os.replace(candidate, self.routes_conf)
        if limits != self.limits():
            # Main first: a crash in between leaves the file saying "old", and the next tick redoes it.
            _atomic_write(self.main_conf, self._render_main(self.routes_conf, limits))
            _atomic_write(self.limits_file, json.dumps([asdict(z) for z in limits]))
        if self.is_running():
            self.reload()
        return ApplyResult(changed=True, rejected=rendered.rejected)
