"""The churn-and-fault suite (issue 7): a real system under steady load while it is churned and
faulted, every request counted, every failure classified by phase and target.

    python -m tests.reliability.churn --runtime process --form short
    python -m tests.reliability.churn --runtime docker --form long --data-dir /tmp/churn-long

It starts a whole system with ``tests/e2e/conftest.running_system`` (real ``mlflow server`` with
access control on, real Nginx, real model processes or containers), serves model A (stable URIs:
its Production stage, its version 1, its alias @champion) and model B, starts the load process
(``load.py``, a second process on loopback) and runs the phases below in order, ``--cycles``
times. Each phase is recorded with its start and end, so ``record.py`` can sort every request
into the phase it was sent in and judge the run. Exit status 0 only when every rule held.

The short form (CI) runs each phase once and as fast as it completes; the long form holds every
phase for ``--hold`` seconds (the load keeps running) and repeats the whole cycle.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import requests

from tests.e2e.conftest import System, running_system
from tests.reliability import faults
from tests.reliability.load import read_records
from tests.reliability.record import BACK_WITHIN, Phase, table, verdict

A, B, C = "churn-a", "churn-b", "churn-c"
READY = "VERSION_STATE_READY"
FAILED = "VERSION_STATE_FAILED"
NO_SUCH_PACKAGE = "modelserve-no-such-package-anywhere==0.0.1"
# A real, small package no model here needs: a new environment whose build the suite kills.
EXTRA_PACKAGE = "tomli-w"
FAULT_HOLD = 4.0  # seconds every fault phase lasts at least


@dataclass
class Form:
    cycles: int
    hold: float  # seconds every phase lasts at least (the load keeps running)
    moves: int  # stage + alias moves per cycle
    reloads: int
    outage: float  # seconds the registry is frozen at most
    outage_after_said: float = 1e9  # once get-status says so, it thaws after this many more seconds


FORMS = {
    # The short form thaws 10 s after get-status said "registry unreachable": what it checks (the
    # status, scoring on through the freeze, the registration made during it) needs no more, and
    # CI runs it twice. The long form keeps its whole 90 s freeze.
    "short": Form(cycles=1, hold=0.0, moves=2, reloads=5, outage=40.0, outage_after_said=10.0),
    "long": Form(cycles=3, hold=60.0, moves=10, reloads=40, outage=90.0),
}


@dataclass
class Result:
    runtime: str
    form: str
    phases: list[Phase]
    records: list[dict[str, Any]]
    targets: list[str]
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> str:
        head = (f"churn suite: runtime {self.runtime}, form {self.form}, {len(self.records)} requests, "
                f"{self.seconds:.0f} s")
        tail = ("PASSED: every rule held" if not self.problems
                else "FAILED:\n" + "\n".join(f"  - {p}" for p in self.problems[:60]))
        return f"{head}\n{table(self.records, self.phases, self.targets)}\n{tail}"


def _iris() -> Any:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    frame.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width", "target"]
    return frame


class Churn:
    def __init__(self, system: System, runtime: str, form: Form, work: Path) -> None:
        self.system, self.runtime, self.form, self.work = system, runtime, form, work
        self.phases: list[Phase] = []
        self.prod = "1"  # the version A's Production stage routes to
        self.spare: list[str] = []  # A's versions no stable URI needs: archived in the next cycle
        from mlflow import MlflowClient

        self.client = MlflowClient(system.url)

    # --- models --------------------------------------------------------------------------------
    def log_models(self) -> None:
        """Log the three models every version is registered from, once: logging (MLflow infers
        requirements by loading the model in a subprocess) costs far more than registering."""
        import mlflow
        from sklearn.linear_model import LogisticRegression

        mlflow.set_tracking_uri(self.system.url)
        iris = _iris()
        x, y = iris.drop(columns=["target"]), iris["target"]
        self.rows = x.head(3).to_dict(orient="records")
        fitted = LogisticRegression(max_iter=500).fit(x, y)

        def log(pip_requirements: list[str] | None) -> str:
            with mlflow.start_run():
                info = mlflow.sklearn.log_model(fitted, name="model", input_example=x.head(3),
                                                pip_requirements=pip_requirements)
            return str(info.model_uri)

        good = log(None)
        reqs = [line.strip() for line in Path(mlflow.pyfunc.get_model_dependencies(good)).read_text().splitlines()
                if line.strip() and not line.startswith("#")]
        # The same requirements plus one: a new environment each, no inference to wait for.
        self.sources = {"good": good, "bad": log([*reqs, NO_SUCH_PACKAGE]), "extra": log([*reqs, EXTRA_PACKAGE])}

    def register(self, model: str, source: str = "good") -> str:
        import mlflow

        return str(mlflow.register_model(self.sources[source], model).version)

    # --- helpers -----------------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str, kind: str = "quiet", model: str = "") -> Iterator[Phase]:
        p = Phase(name=name, kind=kind, start=time.time(), model=model)
        self.phases.append(p)
        print(f"[{time.strftime('%H:%M:%S')}] phase {name}", flush=True)
        try:
            yield p
            # A fault phase runs on a little after recovery even in the short form: requests sent
            # right after it count, and every target gets to send some.
            rest = p.start + max(self.form.hold, FAULT_HOLD if kind == "fault" else 0.0) - time.time()
            if rest > 0:
                time.sleep(rest)
        except Exception as exc:  # recorded and judged; the next phases still run and are counted
            p.problems.append(f"{type(exc).__name__}: {str(exc)[:600]}")
            print(f"  phase {name} broke: {p.problems[-1]}", flush=True)
        finally:
            p.end = time.time()

    def url(self, model: str, segment: str) -> str:
        return f"{self.system.url}/model/{model}/{segment}/invocations"

    def answers(self, model: str, segment: str) -> bool:
        try:
            # Exactly the load's request (its bearer token; no netrc), on a new connection.
            r = self.system.raw.post(self.url(model, segment), json=self.rows, timeout=10,
                                     headers={"Authorization": f"Bearer {self.system.token}"})
        except requests.RequestException:
            return False
        return r.status_code == 200

    def aliases(self, model: str) -> dict[str, str]:
        r = self.system.api("GET", "list-version-aliases", registered_model_name=model)
        return {a["alias"]: a["endpoint_version_name"] for a in r.json()["aliases"]} if r.status_code == 200 else {}

    def routed(self, production: str, champion: str) -> None:
        self.system.wait_for(f"Production -> {production}, @champion -> {champion}", lambda: (
            a := self.aliases(A)).get("Production") == production and a.get("@champion") == champion,
            timeout=120, every=0.2)

    def events(self, model: str) -> list[str]:
        r = self.system.api("GET", "get-event-history", registered_model_name=model)
        return [e["message"] for e in r.json()["events"]] if r.status_code == 200 else []

    def states(self, model: str) -> dict[str, str]:
        return {v: d["state"] for v, d in self.system.versions(model).items()}

    def deploy_timeout(self) -> float:
        return 900.0 if self.runtime == "docker" else 300.0

    # --- the run -------------------------------------------------------------------------------
    def setup(self) -> None:
        self.log_models()
        assert self.register(A) == "1" and self.register(A) == "2" and self.register(B) == "1"
        self.spare = ["2"]
        for model in (A, B):
            assert self.system.api("POST", "enable", registered_model_name=model).status_code == 200
        for model, version in ((A, "1"), (A, "2"), (B, "1")):
            self.system.wait_version(model, version, READY, timeout=self.deploy_timeout())
        self.client.transition_model_version_stage(A, "1", "Production")
        self.client.set_registered_model_alias(A, "champion", "1")
        self.routed("1", "1")
        self.system.wait_for("stable URIs answer", lambda: all(
            self.answers(m, s) for m, s in ((A, "Production"), (A, "1"), (A, "@champion"), (B, "1"))), timeout=60)

    def cycle(self, n: int) -> None:
        with self.phase(f"{n}.register"):
            new = self.register(A)
            self.system.wait_version(A, new, READY, timeout=self.deploy_timeout())
        with self.phase(f"{n}.stage-alias-moves"):
            old = self.prod
            for i in range(self.form.moves):
                to, back = (new, old) if i % 2 == 0 else (old, new)
                # Production is the newest ready version in the stage: the other one leaves it.
                self.client.transition_model_version_stage(A, to, "Production")
                self.client.transition_model_version_stage(A, back, "Staging")
                self.client.set_registered_model_alias(A, "champion", to)
                self.routed(to, to)
            # Whichever of the two no longer serves Production is archived next (never version 1:
            # its version URI is one of the stable ones).
            if self.form.moves % 2:
                self.prod = new
                self.spare += [old] if old != "1" else []
            else:
                self.spare.append(new)
            self.client.set_registered_model_alias(A, "champion", "1")
            self.routed(self.prod, "1")
        with self.phase(f"{n}.archive"):
            for version in self.spare:
                self.client.transition_model_version_stage(A, version, "Archived")
            gone = list(self.spare)
            self.system.wait_for(f"versions {gone} removed", lambda: not set(gone) & set(self.states(A)),
                                 timeout=120)
            self.spare = []
        with self.phase(f"{n}.other-models"):
            if n == 1:
                self.register(C)
            assert self.system.api("POST", "enable", registered_model_name=C).status_code == 200
            self.system.wait_version(C, "1", READY, timeout=self.deploy_timeout())
            assert self.system.api("POST", "disable", registered_model_name=C).status_code == 200
            self.system.wait_for(f"{C} stopped", lambda: any("Serving stopped" in m for m in self.events(C))
                                 and not self.states(C), timeout=120)
        with self.phase(f"{n}.nginx-reloads"):
            for _ in range(self.form.reloads):
                faults.reload_nginx(self.system)
                time.sleep(0.3)
        with self.phase(f"{n}.supervisor-restarts") as p:
            for name, sig in (("api", signal.SIGKILL), ("reconciler", signal.SIGKILL),
                              ("api", signal.SIGTERM), ("reconciler", signal.SIGTERM)):
                took = faults.restart_child(self.system, name, sig)
                print(f"  {name} {signal.Signals(sig).name}: back in {took:.1f} s", flush=True)
                time.sleep(2.5)  # past the launcher's restart backoff for the next one
            if self.states(A).get(self.prod) != READY:
                p.problems.append(f"version {self.prod} not READY after the restarts: {self.states(A)}")
        # Both runtimes keep the host's scoring servers when the host dies: docker's container
        # and the process runtime's box each start a new host in its place.
        host_event = "a new one was started in its place"
        self.kill(n, "kill-worker", "worker", lambda: faults.kill_worker(self.system, A, self.prod, self.runtime),
                  log="forking a new one")
        self.kill(n, "kill-version", "version", lambda: faults.kill_version(self.system, A, self.prod, self.runtime),
                  event="restarted by the model host")
        self.kill(n, "kill-host", "host", lambda: faults.kill_host(self.system, A, self.runtime), event=host_event)
        with self.phase(f"{n}.build-fails") as p:
            bad = self.register(A, "bad")
            self.failed_alone(p, bad, NO_SUCH_PACKAGE.split("=")[0])
        if self.runtime == "process":
            with self.phase(f"{n}.build-killed") as p:
                before = self.states(A)
                box: list[str] = []
                thread = threading.Thread(target=lambda: box.append(self.register(A, "extra")))
                thread.start()
                killed = faults.kill_build(self.system, timeout=120)
                thread.join(timeout=120)
                print(f"  killed: {killed[:160]}", flush=True)
                [killed_version] = [v for v in box] or [""]
                if not killed_version:
                    p.problems.append("the registration of the version to kill did not finish")
                else:
                    self.failed_alone(p, killed_version, "", before)
        self.outage(n)

    def capacity(self) -> dict[str, Any]:
        """A's host status, as the judge of "full capacity" reads it ({} while it cannot be read)."""
        try:
            return faults.status(self.system, A, self.runtime)
        except (OSError, ValueError, KeyError):
            return {}

    def at_full_capacity(self, what: str, before: dict[str, Any], p: Phase, killed: Any) -> bool:
        """Every version of A running with all its workers and none of an old generation left, as
        reported after the kill, and the killed process replaced."""
        now = self.capacity()
        versions = now.get("versions") or {}
        fresh = float(now.get("updated") or 0) >= (p.fault_done or p.fault_at)
        # A lost worker is replaced between two reports of the host: that one is read from /proc.
        if self.prod not in versions or (what != "worker" and not fresh):
            return False
        for d in versions.values():
            if d.get("state") != "running" or d.get("retiring") or d.get("workers", 0) < d.get("wanted_workers", 1):
                return False
        if what == "worker":
            found = faults.workers(self.system, A, self.prod, self.runtime)
            return killed not in found and len(found) >= int(versions[self.prod].get("wanted_workers", 1))
        if what == "version":
            return versions[self.prod].get("pid") != (before.get("versions") or {}).get(self.prod, {}).get("pid")
        return now.get("host_pid") != before.get("host_pid")

    def kill(self, n: int, name: str, what: str, act: Callable[[], Any], event: str = "", log: str = "") -> None:
        with self.phase(f"{n}.{name}", "fault", "A") as p:  # "A": its targets' label
            seen = len(self.events(A))
            before = self.capacity()
            p.fault_at = time.time()
            killed = act()
            p.fault_done = time.time()
            deadline = time.monotonic() + BACK_WITHIN
            while time.monotonic() < deadline:
                states = self.states(A)
                if (states and all(s == READY for s in states.values()) and self.at_full_capacity(what, before, p, killed)
                        and self.answers(A, self.prod)):
                    p.ready_at = time.time()
                    break
                time.sleep(0.05)
            print(f"  {name} of version {self.prod}: back at full capacity after "
                  f"{p.ready_at - p.fault_at if p.ready_at else float('nan'):.1f} s", flush=True)
            if event:
                try:
                    self.system.wait_for(f"an event saying '{event}'",
                                         lambda: any(event in m for m in self.events(A)[: -seen or None]), timeout=60)
                except AssertionError:
                    p.problems.append(f"no event saying '{event}'; events: {self.events(A)[:5]}")
            if log:
                logs = self.system.api("GET", "get-version-logs", registered_model_name=A,
                                       endpoint_version_name=self.prod).json().get("logs", "")
                if log not in logs:
                    p.problems.append(f"the version's log does not say '{log}': {logs[-500:]!r}")

    def failed_alone(self, p: Phase, version: str, in_log: str, before: dict[str, str] | None = None) -> None:
        """The version FAILED with its log; every other version as it was; then it is archived."""
        before = before or self.states(A)
        try:
            failed = self.system.wait_version(A, version, FAILED, timeout=self.deploy_timeout())
        except AssertionError as exc:
            p.problems.append(f"version {version} not FAILED: {str(exc)[:300]}")
            return
        logs = self.system.api("GET", "get-version-logs", registered_model_name=A,
                               endpoint_version_name=version).json().get("logs", "")
        if in_log not in logs or len(logs) < 200:
            p.problems.append(f"version {version}'s log does not show why it failed: {logs[-500:]!r}")
        print(f"  version {version} FAILED: {failed.get('state_message', '')[:160]}", flush=True)
        after = {v: s for v, s in self.states(A).items() if v != version}
        if after != {v: s for v, s in before.items() if v != version}:
            p.problems.append(f"other versions disturbed: {before} -> {after}")
        leftovers = list((self.system.data_dir / "envs").glob(".building-*"))
        if leftovers:
            p.problems.append(f"half-built environments left: {leftovers}")
        self.client.transition_model_version_stage(A, version, "Archived")
        self.system.wait_for(f"version {version} removed", lambda: version not in self.states(A), timeout=120)

    def outage(self, n: int) -> None:
        with self.phase(f"{n}.registry-unreachable") as p:
            box: list[str] = []
            t0 = time.monotonic()
            with faults.registry_stopped(self.system):
                # Registered while the registry is frozen: the call completes when it thaws, and
                # the reconciler must then catch up with it.
                thread = threading.Thread(target=lambda: box.append(self.register(A)), daemon=True)
                thread.start()
                said_at: float | None = None
                while time.monotonic() - t0 < self.form.outage and not (
                        said_at is not None and time.monotonic() - said_at >= self.form.outage_after_said):
                    r = None
                    try:
                        r = self.system.api("GET", "get-status", registered_model_name=A)
                    except requests.RequestException:
                        pass
                    if r is not None and r.status_code == 200 and "registry unreachable" in \
                            r.json()["endpoint_status"].get("state_message", ""):
                        said_at = said_at or time.monotonic()
                    time.sleep(1)
            thread.join(timeout=180)
            if said_at is None:
                p.problems.append(f"get-status never said 'registry unreachable' in {self.form.outage:.0f} s")
            if not box:
                p.problems.append("the registration sent during the outage did not complete")
                return
            version = box[0]
            try:
                self.system.wait_version(A, version, READY, timeout=self.deploy_timeout())
            except AssertionError as exc:
                p.problems.append(f"version {version} registered during the outage never READY: {str(exc)[:300]}")
            if not any("reachable again" in m for m in self.events(A)):
                p.problems.append("no event saying the registry is reachable again")
            self.spare.append(version)


def run(runtime: str, form_name: str, data_dir: Path, form: Form | None = None) -> Result:
    form = form or FORMS[form_name]
    os.environ["PATH"] = f"{Path(sys.executable).parent}:/usr/sbin:{os.environ.get('PATH', '')}"
    extra = {"MODELSERVE_RUNTIME": runtime}
    if runtime == "docker":
        extra.update({"MODELSERVE_DOCKER_BASE_IMAGE": os.environ.get("MODELSERVE_DOCKER_BASE_IMAGE",
                                                                     "modelserve-base:bookworm"),
                      "MODELSERVE_DOCKER_DRAIN_SECONDS": "1"})
    data_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    targets = ["A/Production", "A/1", "A/@champion", "B/1", "keepalive:A/Production"]
    with running_system(data_dir, extra) as system:
        churn = Churn(system, runtime, form, data_dir)
        churn.setup()
        urls = {"A/Production": churn.url(A, "Production"), "A/1": churn.url(A, "1"),
                "A/@champion": churn.url(A, "@champion"), "B/1": churn.url(B, "1")}
        urls["keepalive:A/Production"] = urls["A/Production"]
        body = data_dir / "load-body.json"
        body.write_text(json.dumps(churn.rows))
        out, stop = data_dir / "load.jsonl", data_dir / "load.stop"
        out.unlink(missing_ok=True)
        stop.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "NETRC"}
        env["NETRC"] = str(data_dir / "no-netrc")  # the load sends exactly its bearer token
        load = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.load", *[f"--target={k}={v}" for k, v in urls.items()],
             f"--body={body}", f"--token={system.token}", f"--out={out}", f"--stop-file={stop}",
             f"--seconds={3600 * 3}"], env=env, cwd=Path(__file__).resolve().parents[2])
        try:
            time.sleep(2)
            for n in range(1, form.cycles + 1):
                churn.cycle(n)
            with churn.phase("final"):
                time.sleep(2)
        finally:
            stop.write_text("stop")
            try:
                load.wait(timeout=90)
            except subprocess.TimeoutExpired:
                load.kill()
                load.wait()
        records = read_records(out)
    # Only what the load sent while phases ran is judged (the load starts before the first one).
    records = [r for r in records if r["t"] >= churn.phases[0].start] if churn.phases else records
    result = Result(runtime, form_name, churn.phases, records, targets, seconds=time.monotonic() - t_start)
    result.problems = verdict(records, churn.phases, targets)
    (data_dir / "churn-result.json").write_text(json.dumps(
        {"runtime": runtime, "form": form_name, "phases": [p.to_json() for p in churn.phases],
         "problems": result.problems, "requests": len(records)}, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    import warnings

    # MLflow's deprecation of stages and its schema hints would bury the suite's own lines.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime", choices=["process", "docker"], default="process")
    p.add_argument("--form", choices=sorted(FORMS), default="short")
    p.add_argument("--data-dir", type=Path, help="where the system keeps its data (default: a new temp dir)")
    p.add_argument("--cycles", type=int, help="override the form's number of cycles")
    p.add_argument("--hold", type=float, help="override the form's seconds per phase")
    args = p.parse_args(argv)
    base = FORMS[args.form]
    form = replace(base, cycles=args.cycles or base.cycles,
                   hold=base.hold if args.hold is None else args.hold)
    data = args.data_dir or Path(tempfile.mkdtemp(prefix=f"churn-{args.runtime}-"))
    result = run(args.runtime, args.form, data, form)
    print(result.report())
    print(f"records: {data / 'load.jsonl'}; phases: {data / 'churn-result.json'}")
    return 0 if not result.problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
