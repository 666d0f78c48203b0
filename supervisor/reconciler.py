"""The reconciler: exactly one process that keeps what is served equal to the registry.

It runs a tick on an APScheduler interval (a few seconds) and at once when woken: by the API on
enable/disable and by MLflow webhooks, through a datagram on a Unix socket (a lost wake-up only
delays work to the next tick, it never loses it, because the tick always re-reads everything).
An exclusive file lock guarantees a single reconciler however the system is started.
Each tick: read store + registry, compute the plan (``plan.py``, pure), then execute it in an
order that keeps serving: routes go before processes on the way out, processes are healthy
before routes point at them on the way in. Slow deploys run in a thread pool.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from supervisor import envsweep
from supervisor.capture.ingester import Ingester
from supervisor.deployer import Deployer, launches
from supervisor.endpoints.ratelimits import limit_zones
from supervisor.gateway import Gateway
from supervisor.idleplan import idle_changes
from supervisor.isolation.boxes import box_for
from supervisor.metrics.activity import Activity
from supervisor.metrics.collector import Collector
from supervisor.plan import EndpointChange, Plan, compute_plan, endpoint_routes, model_routes
from supervisor.registry import Registry, RegistryModel, RegistryUnavailable
from supervisor.runtime import make_runtime
from supervisor.runtime.base import Runtime
from supervisor.settings import Settings
from supervisor.store import (
    ASLEEP,
    ENDPOINT_UPDATED,
    LAUNCHING,
    MODEL_UPDATE,
    PENDING,
    READY,
    VERSION_UPDATE,
    Deployment,
    Store,
    UidRangeExhausted,
    endpoint_models,
)

log = logging.getLogger("modelserve.reconciler")

REGISTRY_ERROR_KEY = "registry_error"
HOST_BACKOFF_MAX = 30.0


def send_wake(settings: Settings) -> None:
    """Ask the reconciler for a tick now; never fails (the schedule is the fallback)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"wake", str(settings.wake_socket))
    except OSError:
        pass


class Reconciler:
    def __init__(self, settings: Settings, store: Store | None = None, runtime: Runtime | None = None,
                 registry: Registry | None = None, gateway: Gateway | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.resolved_store_url)
        self.runtime = runtime or make_runtime(settings)
        self.registry = registry or Registry(settings.resolved_tracking_uri)
        self.gateway = gateway or Gateway(settings)
        self._host_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._tick_lock = threading.Lock()
        self._in_flight: set[tuple[str, str]] = set()
        self._in_flight_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="deploy")
        self.deployer = Deployer(settings, self.store, self.registry, self.runtime, self.host_lock, self.wake,
                                 self.publish)
        self.scheduler: BackgroundScheduler | None = None
        self._applied: dict[str, tuple[Any, ...]] = {}  # model -> (launches, box) last given to its host
        self._seen_restarts: dict[tuple[str, str], int] = {}
        self._seen_host_restarts: dict[str, int] = {}
        self._seen_oom: dict[str, int] = {}
        self._host_failures: dict[str, tuple[int, float]] = {}  # model -> (count, not before)
        self._rejected_reported: set[str] = set()
        self._box_problems: dict[str, str] = {}  # model -> why its box cannot be worked out
        self.activity = Activity(on_ask=self.wake)  # requests seen by the metrics collector
        self._awake_since: dict[tuple[str, str], float] = {}  # READY versions -> when first seen READY
        self._asleep_since: dict[tuple[str, str], float] = {}  # asleep versions -> when put to sleep (0: before)

    def host_lock(self, model: str) -> threading.Lock:
        return self._host_locks[model]

    def wake(self) -> None:
        if self.scheduler is not None:
            # Fails only while the scheduler shuts down; the wake-up is then moot.
            with contextlib.suppress(Exception):
                self.scheduler.modify_job("reconcile", next_run_time=datetime.now(self.scheduler.timezone))

    # --- one tick ------------------------------------------------------------------------
    def tick(self) -> Plan:
        with self._tick_lock:
            return self._tick()

    def _tick(self) -> Plan:
        enabled = self.store.enabled_models()
        endpoints = self.store.endpoints()
        answered = self._read_registry(sorted(set(enabled) | endpoint_models(endpoints)))
        deps = self._deployments_by_model()
        if self._apply_idle(enabled, endpoints, deps):
            deps = self._deployments_by_model()
        with self._in_flight_lock:
            busy = set(self._in_flight)
        plan = compute_plan(enabled, answered, deps, self.runtime.hosts(), busy, endpoints)
        self._apply(plan)
        self._apply_endpoint_changes(plan.endpoint_changes)
        self._supervise_hosts(plan.ensure_host)
        self._render_routes()
        return plan

    def _apply_endpoint_changes(self, changes: tuple[EndpointChange, ...]) -> None:
        """A finished config update switches all its traffic at once: the gateway routes the new
        config first, and only then is it recorded as serving (so READY is already true when a
        client reads it). A failed one is recorded; the old config never stopped serving, and the
        next tick stops what only the failed config needed."""
        for change in changes:
            if change.promote:
                self._render_routes(promoted=(change.endpoint,))
                if self.store.promote_config(change.endpoint, change.version):
                    log.info("endpoint %s: config version %d is serving", change.endpoint, change.version)
            elif self.store.fail_config(change.endpoint, change.version, change.message[:4000]):
                log.warning("endpoint %s: config version %d failed: %s", change.endpoint, change.version,
                            change.message)
        if changes:
            self._render_routes()
            self.wake()

    def _apply_idle(self, enabled: list[str], endpoints: list[Any], deps: dict[str, list[Deployment]]) -> bool:
        """Scale to zero (supervisor/idleplan.py decides). A sleeper's routes change first (its
        requests then get 503 + Retry-After and wake it), and its server stops at this tick's host
        supervision; a woken version is LAUNCHING, so this tick's plan resumes its deploy at the
        health check and the host supervision starts its server. True when anything changed."""
        now = time.time()
        ready = {(d.model, d.version) for ds in deps.values() for d in ds if d.state == READY}
        self._awake_since = {k: self._awake_since.get(k, max(now, self.activity.started)) for k in ready}
        idle = self.settings.scale_to_zero_idle_seconds
        asleep = {(d.model, d.version) for ds in deps.values() for d in ds if d.state == ASLEEP}
        self._asleep_since = {k: self._asleep_since.get(k, 0.0) for k in asleep}
        changes = idle_changes(deps, endpoints, enabled, self.activity.last_seen(), self._awake_since,
                               self.activity.take_asked(), now, idle, self.store.scale_to_zero_models(),
                               self._asleep_since)
        for model, version in changes.sleep:
            self._asleep_since[(model, version)] = now
            self.store.upsert_deployment(model, version, state=ASLEEP,
                                         state_message=f"Scaled to zero after {idle:g} s without a request; "
                                                       "the first request starts it again")
            self.store.add_event(model, VERSION_UPDATE, f"Version {version} scaled to zero (no request for "
                                                        f"{idle:g} s); its environment is kept", version)
        if changes.sleep:
            self._render_routes()
        for model, version in changes.wake:
            self.store.upsert_deployment(model, version, state=LAUNCHING,
                                         state_message="Waking from scale to zero: starting the scoring server")
            self.store.add_event(model, VERSION_UPDATE, f"Version {version} is waking from scale to zero", version)
        return bool(changes.sleep or changes.wake)

    def _deployments_by_model(self) -> dict[str, list[Deployment]]:
        out: dict[str, list[Deployment]] = defaultdict(list)
        for d in self.store.deployments():
            out[d.model].append(d)
        return out

    def _read_registry(self, enabled: list[str]) -> dict[str, RegistryModel | None]:
        answered: dict[str, RegistryModel | None] = {}
        error: str | None = None
        for model in enabled:
            try:
                answered[model] = self.registry.get_model(model)
            except RegistryUnavailable as exc:
                error = str(exc).splitlines()[0][:500] if str(exc) else "unreachable"
                # One unanswered read is enough: a registry that hangs would otherwise hold the
                # tick (and the host supervision after it) for one timeout per enabled model.
                break
            except Exception as exc:  # a 4xx we did not expect: skip this model, keep the rest
                log.warning("registry error for %r: %s", model, exc)
        previous = self.store.get_meta(REGISTRY_ERROR_KEY)
        if error and not previous:
            for model in enabled:
                self.store.add_event(model, MODEL_UPDATE,
                                     f"Model registry unreachable; serving continues unchanged: {error}")
        elif previous and not error and answered:
            for model in enabled:
                self.store.add_event(model, MODEL_UPDATE, "Model registry reachable again; catching up")
        if bool(error) != bool(previous) or (error and not answered):
            self.store.set_meta(REGISTRY_ERROR_KEY, f"{int(time.time() * 1000)} {error}" if error else None)
        return answered

    def _apply(self, plan: Plan) -> None:
        for model in plan.stop:
            self._stop_model(model)
        for r in plan.relabel:
            old = self.store.deployment(r.model, r.version)
            self.store.upsert_deployment(r.model, r.version, stage=r.stage, aliases=list(r.aliases))
            if old is not None and old.stage != r.stage:
                self.store.add_event(r.model, ENDPOINT_UPDATED,
                                     f"Version {r.version} moved from stage {old.stage} to {r.stage}", r.version)
            if old is not None and sorted(old.aliases) != sorted(r.aliases):
                shown = ", ".join("@" + a for a in r.aliases) or "none"
                self.store.add_event(r.model, ENDPOINT_UPDATED, f"Version {r.version} aliases: {shown}", r.version)
        if plan.remove:
            for model, version in plan.remove:
                self.store.delete_deployment(model, version)
                self.store.add_event(model, VERSION_UPDATE,
                                     f"Version {version} removed (archived or deleted in the registry)", version)
            # Routes first, so no request is sent to a process about to stop.
            self._render_routes()
        for model, rv in plan.deploy:
            existing = self.store.deployment(model, rv.version)
            if existing is None:
                self.store.upsert_deployment(model, rv.version, state=PENDING, state_message="Queued for deployment",
                                             stage=rv.stage, aliases=list(rv.aliases))
                self.store.add_event(model, VERSION_UPDATE, f"Version {rv.version} is pending deployment", rv.version)
            with self._in_flight_lock:
                self._in_flight.add((model, rv.version))
            self.pool.submit(self._run_deploy, model, rv)

    def _run_deploy(self, model: str, rv: Any) -> None:
        try:
            self.deployer.deploy(model, rv)
        finally:
            with self._in_flight_lock:
                self._in_flight.discard((model, rv.version))

    def _stop_model(self, model: str) -> None:
        self.store.delete_deployments(model)
        self._render_routes()
        with self.host_lock(model):
            self.runtime.stop_host(model)
        self._applied.pop(model, None)
        self.store.add_event(model, MODEL_UPDATE, "Serving stopped: the model host and its routes were removed")

    # --- hosts ---------------------------------------------------------------------------
    def _supervise_hosts(self, models: tuple[str, ...]) -> None:
        for model in models:
            if not self.store.is_served(model):
                continue
            lock = self.host_lock(model)
            # Held by a deploy that is changing this host right now (a container build can take a
            # minute): the next tick looks again, and the other models are not kept waiting.
            if not lock.acquire(blocking=False):
                continue
            try:
                self._supervise_host(model)
            finally:
                lock.release()

    def _supervise_host(self, model: str) -> None:
        wanted = launches(self.store, model)
        try:
            box = box_for(self.store, self.settings, model)
        except UidRangeExhausted as exc:
            # This model cannot get an identity of its own: it is not started without one, and
            # the other models are supervised as usual. Said once, not every tick.
            if self._box_problems.get(model) != str(exc):
                self._box_problems[model] = str(exc)
                self.store.add_event(model, MODEL_UPDATE, f"Model host not started: {exc}")
            return
        self._box_problems.pop(model, None)
        # The box is part of what the host was given: a MANAGE user's change of it reaches the
        # runtime at the next tick (which starts the host anew in the new box).
        key = (tuple(sorted((v.version, str(v.python), str(v.model_dir), v.port) for v in wanted)), box)
        state = self.runtime.host_state(model)
        if state is None or not state.alive:
            count, not_before = self._host_failures.get(model, (0, 0.0))
            if time.monotonic() < not_before:
                return
            self.runtime.apply_host(model, wanted, box)
            self._applied[model] = key
            # Scoring servers outlive their host and the new one adopts them: a version whose
            # server still runs keeps serving as it was. The others are loading again: until they
            # answer they are LAUNCHING (their routes answer 503 + Retry-After), and the deploy
            # resumes at the health check.
            kept = [v.version for v in wanted
                    if state is not None and (p := state.versions.get(v.version)) is not None and p.running]
            for v in wanted:
                if v.version not in kept:
                    self.store.upsert_deployment(model, v.version, state=LAUNCHING,
                                                 state_message="Restarting with the model host")
            if state is None:
                self.store.add_event(model, MODEL_UPDATE, "Model host started")
            else:
                count += 1
                delay = min(HOST_BACKOFF_MAX, 2.0 ** (count - 1))
                self._host_failures[model] = (count, time.monotonic() + delay)
                still = (f"; versions {', '.join(kept)} kept serving" if len(kept) > 1
                         else f"; version {kept[0]} kept serving" if kept else "")
                self.store.add_event(model, MODEL_UPDATE,
                                     f"Model host exited unexpectedly ({state.reason or 'no reason known'}); "
                                     f"restarted it (restart {count}){still}")
            return
        if self._applied.get(model) != key:
            self.runtime.apply_host(model, wanted, box)
            self._applied[model] = key
        count, _ = self._host_failures.get(model, (0, 0.0))
        if count:
            self._host_failures[model] = (count, 0.0)
        seen_host = self._seen_host_restarts.get(model)
        self._seen_host_restarts[model] = state.host_restarts
        if seen_host is not None and state.host_restarts > seen_host:
            self.store.add_event(model, MODEL_UPDATE,
                                 f"Model host {state.host_last_exit or 'exited'}; a new one was started in its "
                                 f"place and its scoring servers kept serving (restart {state.host_restarts})")
        seen_oom = self._seen_oom.get(model)
        self._seen_oom[model] = state.oom_kills
        oom = seen_oom is not None and state.oom_kills > seen_oom
        limit = f" (limit {state.memory_limit_mib} MiB)" if state.memory_limit_mib else ""
        restarted = False
        for version, proc in state.versions.items():
            seen = self._seen_restarts.get((model, version))
            self._seen_restarts[(model, version)] = proc.restarts
            if seen is not None and proc.restarts > seen:
                why = proc.last_exit or "exited"
                if oom and "SIGKILL" in why:
                    why, restarted = f"was killed: out of memory{limit}", True
                self.store.add_event(model, VERSION_UPDATE,
                                     f"Scoring server of version {version} {why}; "
                                     f"restarted by the model host (restart {proc.restarts})", version)
        if oom and not restarted:
            # A forked worker killed for the memory limit is forked again by its server, which
            # itself lives on: no restart to report, but the kill is said all the same.
            self.store.add_event(model, MODEL_UPDATE,
                                 f"Out of memory{limit}: the kernel killed {state.oom_kills - (seen_oom or 0)} "
                                 "process(es) of this model; what was killed is started again")

    # --- routes --------------------------------------------------------------------------
    def publish(self, model: str, version: str, state: str, message: str = "") -> None:
        """Route a version as ``state`` (READY: routed; FAILED: no route), then record it, so the
        recorded state is always already true at the gateway. Under the tick lock, so a tick
        cannot render the version's previous state in between."""
        with self._tick_lock:
            self._render_routes(override=(model, version, state))
            self.store.upsert_deployment(model, version, state=state, state_message=message)

    def _render_routes(self, override: tuple[str, str, str] | None = None, promoted: tuple[str, ...] = ()) -> None:
        """Every route from the store as it is, but for ``override`` (a version's new state) and
        ``promoted`` (endpoints whose pending config is to serve already)."""
        enabled = set(self.store.enabled_models())
        endpoints = self.store.endpoints()
        deps = self._deployments_by_model()
        if override is not None:
            for d in deps.get(override[0], []):
                if d.version == override[1]:
                    d.state = override[2]
        # Models only endpoints serve get their versions' upstreams without any /model/ URI.
        served = sorted(enabled | endpoint_models(endpoints))
        tables = [
            model_routes(m, deps.get(m, []), lambda d: self.runtime.address(d.model, d.version), m in enabled)
            for m in served
        ]
        limits = self.store.rate_limits()
        zones = limit_zones({ep.name: limits[ep.id] for ep in endpoints if ep.id in limits})
        result = self.gateway.apply_routes(tables, [endpoint_routes(ep, deps, ep.name in promoted) for ep in endpoints],
                                           zones)
        # Only now, with the gateway running these routes, may a runtime retire what they replaced.
        self.runtime.routes_applied(
            v.address for t in tables for v in t.versions if v.address is not None
        )
        for name in result.rejected:
            if name not in self._rejected_reported:
                self._rejected_reported.add(name)
                self.store.add_event(name, MODEL_UPDATE,
                                     "This model name cannot be routed (it holds control characters, or another "
                                     "served model's name differs from it only in letter case); its versions are "
                                     "not reachable through the gateway")

    # --- process entry -------------------------------------------------------------------
    def run_forever(self) -> None:
        self.scheduler = BackgroundScheduler()
        self.scheduler.add_job(self._safe_tick, "interval", seconds=self.settings.reconcile_interval,
                               id="reconcile", max_instances=1, coalesce=True,
                               next_run_time=datetime.now())
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        threading.Thread(target=self._listen_for_wakes, args=(stop,), daemon=True).start()
        # The reconciler is the single reader of the gateway's metrics log (supervisor/metrics).
        collector = Collector(self.settings, self.store, self.gateway.reopen_logs, self.activity)
        threading.Thread(target=collector.run, args=(stop,), name="metrics", daemon=True).start()
        # And of its capture log, with the versions' spools: the inference tables (supervisor/capture).
        ingester = Ingester(self.settings, self.store, self.gateway.reopen_logs)
        threading.Thread(target=ingester.run, args=(stop,), name="capture", daemon=True).start()
        self.scheduler.start()
        log.info("reconciler running (every %.1f s, runtime %s)", self.settings.reconcile_interval, self.runtime.name)
        stop.wait()
        log.info("reconciler stopping; model hosts keep serving")
        self.scheduler.shutdown(wait=False)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _safe_tick(self) -> None:
        try:
            self.tick()
        except Exception:
            log.exception("reconcile tick failed; retrying at the next tick")

    def _listen_for_wakes(self, stop: threading.Event) -> None:
        path = self.settings.wake_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(str(path))
            s.settimeout(1.0)
            while not stop.is_set():
                try:
                    s.recv(64)
                except TimeoutError:
                    continue
                except OSError:
                    return
                self.wake()


def _single_instance(settings: Settings) -> Any:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(settings.run_dir / "reconciler.lock", "a+")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.stderr.write("another reconciler is already running for this data dir; exiting\n")
        raise SystemExit(1) from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per tick drowns the log
    settings = Settings()
    lock = _single_instance(settings)
    try:
        # Builds killed with a previous reconciler are finished by nobody: clear them before any
        # new build starts (a build still running elsewhere holds its lock and is left alone).
        envsweep.sweep(settings.envs_dir, log.info)
        Reconciler(settings).run_forever()
    finally:
        lock.close()
        Path(settings.wake_socket).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
