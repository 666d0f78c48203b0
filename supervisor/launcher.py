"""``modelserve up`` / ``down``: start and stop the whole system on one machine.

The launcher starts, in order, and waits for each to answer before the next: the MLflow tracking
server (unless an external one is configured), the reconciler (one process, guarded by a file
lock), the API under gunicorn, and Nginx, the gateway. It then watches them and restarts one
that dies (with backoff), until Ctrl-C or ``modelserve down``. Model hosts are NOT its children:
they run detached and keep serving while the supervisor restarts. A stop of the whole system
(Ctrl-C, SIGTERM or SIGHUP of ``modelserve up``, even while it is still starting, or ``down``)
stops them explicitly, last (``supervisor/stopping.py``). Every pid is written to ``run/up.json``
as soon as it is started, so ``down`` and ``status`` work from another terminal.

Authentication is on unless ``MODELSERVE_AUTH=off``: the embedded tracking server runs MLflow's
basic-auth app (``supervisor/auth/bootstrap.py`` makes its secrets), and the supervisor's own
processes get the admin's credentials through their environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from supervisor import webhooks
from supervisor.auth import bootstrap
from supervisor.gateway import Gateway
from supervisor.isolation.capabilities import runtime_capabilities
from supervisor.runtime import sockets
from supervisor.runtime.docker import engine_info
from supervisor.settings import Settings
from supervisor.stopping import Leftovers, StopSignals, alive_pids, down_message, stop_model_hosts, tolerant
from supervisor.store import Store

Echo = Callable[[str], None]


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    health_url: str | None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    not_before: float = 0.0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
               abort: Callable[[], bool] = lambda: False) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (proc is not None and proc.poll() is not None) or abort():
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def external_tracking_uri(settings: Settings) -> str:
    """The tracking server to use instead of starting one; '' for the embedded one.

    ``MLFLOW_TRACKING_URI`` counts only when it does not point at our own gateway: users are told
    to set it to the gateway for registering and scoring, which must not stop ``up`` from
    starting the server behind it."""
    uri = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return ""
    own = {f"http://{settings.host}:{settings.port}", f"http://localhost:{settings.port}",
           f"http://127.0.0.1:{settings.port}"}
    return "" if uri.rstrip("/") in own else uri.rstrip("/")


class Launcher:
    def __init__(self, settings: Settings, echo: Echo = print) -> None:
        self.settings = settings
        self.echo = tolerant(echo)
        self.children: list[Child] = []
        self.external = external_tracking_uri(settings)
        self.gateway = Gateway(settings, mlflow_upstream=self._mlflow_upstream())
        self.signals = StopSignals()
        self.secret = settings.webhook_secret or webhooks.kept_secret(settings.run_dir / "webhook_secret")
        self.admin_password = bootstrap.ensure_admin_password(settings)[0] if settings.auth else ""

    def _mlflow_upstream(self) -> str:
        if not self.external:
            return f"127.0.0.1:{self.settings.mlflow_port}"
        return self.external.split("://", 1)[1].split("/", 1)[0]

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "MODELSERVE_DATA_DIR": str(self.settings.data_dir),
            "MODELSERVE_HOST": self.settings.host,
            "MODELSERVE_PORT": str(self.settings.port),
            "MODELSERVE_API_PORT": str(self.settings.api_port),
            "MODELSERVE_MLFLOW_PORT": str(self.settings.mlflow_port),
            "MODELSERVE_TRACKING_URI": self.external or f"http://127.0.0.1:{self.settings.mlflow_port}",
            "PYTHONUNBUFFERED": "1",
            "MODELSERVE_WEBHOOK_SECRET": self.secret,
            # The embedded tracking server may call our API on loopback over plain http.
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": webhooks.encryption_key(self.settings.run_dir / "webhook_key"),
            "MODELSERVE_AUTH": "on" if self.settings.auth else "off",
        })
        if self.settings.auth:
            env.update(bootstrap.client_env(self.settings, self.admin_password))
        # Our own processes talk to the tracking server directly, not through the gateway.
        env.pop("MLFLOW_TRACKING_URI", None)
        return env

    def _children(self) -> list[Child]:
        s = self.settings
        bindir = Path(sys.executable).parent
        out = []
        if not self.external:
            mlflow_dir = s.data_dir / "mlflow"
            mlflow_dir.mkdir(parents=True, exist_ok=True)
            auth_args = ["--app-name", "basic-auth"] if s.auth else []
            out.append(Child(
                "mlflow", [str(bindir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(s.mlflow_port),
                           "--backend-store-uri", f"sqlite:///{mlflow_dir / 'mlflow.db'}",
                           "--artifacts-destination", str(mlflow_dir / "artifacts"),
                           "--serve-artifacts", "--workers", "2", *auth_args,
                           # uvicorn kills a worker that misses one 5 s health ping, dropping every
                           # request it holds: on a busy machine that made the registry (and so the
                           # access checks) fail at random. A slow worker is not a dead one.
                           "--uvicorn-opts", "--timeout-worker-healthcheck 60"],
                s.logs_dir / "mlflow.log", f"http://127.0.0.1:{s.mlflow_port}/health",
                # MLflow 3 starts a job runner (half a dozen huey consumer processes, ~200 MB each)
                # for GenAI jobs that a model registry never runs; a user may still turn it on.
                env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                                          "false"),
                     **(bootstrap.mlflow_server_env(s, self.admin_password) if s.auth else {})}))
        out.append(Child("reconciler", [sys.executable, "-m", "supervisor.reconciler"],
                         s.logs_dir / "reconciler.log", None))
        out.append(Child(
            "api", [str(bindir / "gunicorn"), "--workers", str(s.api_workers), "--threads", str(s.api_threads),
                    "--bind", f"127.0.0.1:{s.api_port}",
                    # compose: the gateway container reaches the API here (no shared network).
                    *(["--bind", f"unix:{s.api_socket}"] if s.compose else []),
                    "--timeout", "60", "--graceful-timeout", "10", "supervisor.api.wsgi:app"],
            s.logs_dir / "api.log", f"http://127.0.0.1:{s.api_port}/api/2.0/modelserve/health"))
        return out

    def _check_auth(self) -> None:
        """With auth on, the admin credentials we hold must work before anything relies on them."""
        if not self.settings.auth:
            return
        uri = self._child_env()["MODELSERVE_TRACKING_URI"]
        problem = bootstrap.check_admin(uri, self.settings.admin_username, self.admin_password)
        if problem:
            self.stop()
            raise SystemExit(f"access control: {problem}")
        # The launcher's own MLflow calls (webhook registration) go as the admin too.
        os.environ.update(bootstrap.client_env(self.settings, self.admin_password))

    def _spawn(self, child: Child) -> None:
        child.log.parent.mkdir(parents=True, exist_ok=True)
        logf: IO[bytes] = open(child.log, "ab")  # noqa: SIM115 - handed to the child
        child.proc = subprocess.Popen(child.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env={**self._child_env(), **child.env}, start_new_session=True)
        logf.close()

    @property
    def _stopping(self) -> bool:
        return self.signals.requested

    def _stop_if_asked(self) -> None:
        """A stop asked for while starting: stop what was started so far, hosts included."""
        if self._stopping:
            self.stop()
            raise SystemExit("modelserve was stopped before it was up")

    def start(self) -> None:
        """Start everything. Call ``signals.install()`` first so that Ctrl-C here stops cleanly."""
        s = self.settings
        state = already_running(s)
        if state:
            raise SystemExit(f"modelserve is already running for {s.data_dir} (gateway {state['gateway']}); "
                             "stop it with `modelserve down`")
        for d in (s.data_dir, s.logs_dir, s.run_dir, s.nginx_dir):
            d.mkdir(parents=True, exist_ok=True)
        if shutil.which(s.nginx_bin) is None and not Path(s.nginx_bin).exists():
            raise SystemExit(f"nginx not found ({s.nginx_bin}); install it (make setup does) and retry")
        if s.sandbox not in ("bwrap", "off"):
            raise SystemExit(f"MODELSERVE_SANDBOX={s.sandbox!r}: use bwrap (the default) or off")
        if s.sandbox == "bwrap" and s.runtime == "process" and shutil.which("bwrap") is None:
            raise SystemExit("bubblewrap (bwrap) not found: every model runs in a box of its own; install it "
                             "(make setup does: apt-get install bubblewrap) or, for local play only, "
                             "set MODELSERVE_SANDBOX=off")
        if s.sandbox == "off":
            self.echo("MODEL CODE IS NOT CONFINED (MODELSERVE_SANDBOX=off): a served model can read and do "
                      "whatever this user can")
        too_long = sockets.check_length(s.sockets_dir.resolve())
        if too_long:
            raise SystemExit(too_long)
        if self.external:
            self.echo(f"using the MLflow tracking server at {self.external}")
        if not s.auth:
            self.echo("AUTHENTICATION IS OFF (MODELSERVE_AUTH=off): anyone who reaches the gateway may do anything")
        self.report_isolation()
        # The schema before any child: they all open the store at once (each copes, but need not).
        Store(s.resolved_store_url).engine.dispose()
        self.children = self._children()
        if self.external:
            self._check_auth()
        for child in self.children:
            t0 = time.monotonic()
            self.echo(f"starting {child.name} ... (log: {child.log})")
            self._spawn(child)
            self._write_state()
            if child.health_url and not _wait_http(child.health_url, s.start_timeout, child.proc,
                                                   abort=lambda: self._stopping):
                self._stop_if_asked()
                self.stop()
                tail = child.log.read_text(errors="replace")[-3000:] if child.log.exists() else ""
                raise SystemExit(f"{child.name} did not start; last lines of {child.log}:\n{tail}")
            self.echo(f"  {child.name} ready in {time.monotonic() - t0:.1f} s")
            if child.name == "mlflow":
                self._check_auth()
            self._stop_if_asked()
        if webhooks.register(self._child_env()["MODELSERVE_TRACKING_URI"],
                             f"http://127.0.0.1:{s.api_port}/api/2.0/modelserve/webhook", self.secret):
            self.echo("  MLflow webhooks wake the reconciler on registry changes")
        self._stop_if_asked()
        if s.compose:
            self.echo("configuring the gateway container's nginx ...")
            self.gateway.attach(s.start_timeout, abort=lambda: self._stopping)
        else:
            self.echo("starting nginx (the gateway) ...")
            self.gateway.start()
        self._write_state()
        self._stop_if_asked()
        if s.compose:
            # The address inside the container means nothing outside it.
            self.echo("modelserve is up: the gateway container serves on its published port "
                      "(127.0.0.1:8080 unless MODELSERVE_GATEWAY_PORT says otherwise)")
            return
        self.echo(f"modelserve is up: gateway {s.gateway_url}\n"
                  f"  export MLFLOW_TRACKING_URI={s.gateway_url}   # register, serve and score through it\n"
                  f"  data in {s.data_dir}; logs in {s.logs_dir}")

    def report_isolation(self) -> None:
        """One line per part of a model's box this machine cannot hold (none when all can)."""
        for missing in runtime_capabilities(self.settings.runtime, self.settings.sandbox, engine_info).not_enforced():
            self.echo(f"isolation: {missing.detail}")

    def _write_state(self) -> None:
        state = {
            "launcher_pid": os.getpid(),
            "children": {c.name: c.proc.pid for c in self.children if c.proc},
            "gateway": self.settings.gateway_url,
            "started": time.time(),
        }
        path = self.settings.run_dir / "up.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, path)

    def watch(self) -> None:
        """Restart a supervisor process that died, until asked to stop; then stop everything."""
        self.signals.install()
        while not self._stopping:
            for child in self.children:
                if child.proc is None or child.proc.poll() is None or self._stopping:
                    continue
                now = time.monotonic()
                if now < child.not_before:
                    continue
                child.restarts += 1
                self.echo(f"{child.name} exited with code {child.proc.returncode}; restarting "
                          f"(restart {child.restarts})")
                child.not_before = now + min(30.0, 2.0 ** child.restarts)
                self._spawn(child)
                self._write_state()
            # In compose the gateway is a container of its own, restarted by the engine.
            if not self.settings.compose and not self.gateway.is_running() and not self._stopping:
                self.echo("nginx is not running; starting it again")
                try:
                    self.gateway.start()
                except Exception as exc:  # keep watching; report and retry on the next round
                    self.echo(f"nginx failed to start: {exc}")
            time.sleep(0.5)
        self.stop()

    def stop(self, stop_models: bool = True) -> None:
        # compose.yaml's supervisor stops for a restart as for `down`: the gateway container and the
        # model containers keep serving (`docker compose down` stops them itself).
        keep_serving = self.settings.compose
        stop_models = stop_models and not keep_serving
        names = ", ".join(c.name for c in reversed(self.children) if c.proc)
        parts = ", ".join(([] if keep_serving else ["the gateway"]) + ([names] if names else []))
        self.echo(f"stopping modelserve: {parts}{', then every model host' if stop_models else ''} ...")
        if keep_serving:
            self.echo("  the gateway and the model containers keep serving")
        else:
            try:
                self.gateway.stop()
            except OSError as exc:  # the processes behind it, and the hosts, are stopped all the same
                self.echo(f"  stopping nginx failed: {exc}")
        # Each child leads its own process group: mlflow server and gunicorn have workers of their own.
        # The reconciler is gone before the hosts are stopped, so nothing starts them again.
        for child in reversed(self.children):
            if child.proc and child.proc.poll() is None:
                _signal_group(child.proc.pid, signal.SIGTERM)
        for child in reversed(self.children):
            if child.proc:
                try:
                    child.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    _signal_group(child.proc.pid, signal.SIGKILL)
                    child.proc.wait()
        hosts = stop_model_hosts(self.settings) if stop_models else 0
        (self.settings.run_dir / "up.json").unlink(missing_ok=True)
        self.echo(f"modelserve stopped ({hosts} model host{'' if hosts == 1 else 's'} stopped)"
                  if stop_models else "modelserve stopped")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def read_state(settings: Settings) -> dict[str, object] | None:
    path = settings.run_dir / "up.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def already_running(settings: Settings) -> dict[str, object] | None:
    """The state of a launcher that still runs for this data dir, if any.

    In compose the container is the unit (the engine runs one supervisor per stack) and its PID
    namespace is its own: the pid that a killed one left in up.json is likely this very process's
    (1) in the next container, so it proves nothing there."""
    state = None if settings.compose else read_state(settings)
    return state if state and pid_alive(int(state["launcher_pid"])) else None  # type: ignore[call-overload]


def stop_leftovers(settings: Settings, state: dict[str, object] | None) -> Leftovers:
    """Stop what a launcher that is gone (a crash, a kill -9) left behind; say what it was."""
    children = state.get("children") if state else None
    pids = alive_pids(children.values() if isinstance(children, dict) else (), pid_alive)
    for child_pid in pids:
        _signal_group(child_pid, signal.SIGTERM)
    gateway = Gateway(settings)
    had_gateway = gateway.is_running()
    gateway.stop()
    # After the reconciler got its SIGTERM: hosts it restarted in the meantime are found and
    # stopped here too.
    hosts = stop_model_hosts(settings)
    (settings.run_dir / "up.json").unlink(missing_ok=True)
    return Leftovers(processes=len(pids), gateway=had_gateway, model_hosts=hosts)


def down(settings: Settings, echo: Echo = print, timeout: float = 60.0) -> bool:
    """Stop a running ``modelserve up`` (started in any terminal). False when none was running."""
    state = read_state(settings)
    pid = int(state["launcher_pid"]) if state else 0  # type: ignore[call-overload]
    if not pid or not pid_alive(pid):
        echo(down_message(False, stop_leftovers(settings, state)))
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    if not pid_alive(pid):
        echo(down_message(True, Leftovers()))
        return True
    # Killed halfway through its stop, the launcher leaves whatever it had not stopped yet
    # (the model hosts go last): finish its work.
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    echo(down_message(True, stop_leftovers(settings, state), killed_after=timeout))
    return True


def up_detached(settings: Settings, echo: Echo = print, timeout: float | None = None) -> None:
    """Start the launcher in the background and return once the gateway answers (by default
    within two of its per-process start timeouts: MLflow's, then the rest together)."""
    timeout = 2 * settings.start_timeout if timeout is None else timeout
    state = read_state(settings)
    if state and pid_alive(int(state["launcher_pid"])):  # type: ignore[call-overload]
        echo(f"modelserve is already running (gateway {state['gateway']})")
        return
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log = settings.logs_dir / "launcher.log"
    with open(log, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "up"], stdout=logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env=dict(os.environ, MODELSERVE_DATA_DIR=str(settings.data_dir)))
    echo(f"starting in the background (log: {log}) ...")
    offset = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        for line in text[offset:].splitlines():
            echo("  " + line)
        offset = len(text)
        if proc.poll() is not None:
            raise SystemExit(f"modelserve failed to start (exit {proc.returncode}); see {log}")
        if read_state(settings) and _wait_http(f"{settings.gateway_url}/api/2.0/modelserve/health", 0.5):
            echo(f"modelserve is up: {settings.gateway_url} (stop it with: modelserve down)")
            return
        time.sleep(0.5)
    raise SystemExit(f"modelserve did not come up within {timeout:.0f} s; see {log}")
