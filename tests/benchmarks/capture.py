"""What an inference table costs: one endpoint with capture on, one with it off, in one run.

    python -m tests.benchmarks.capture [--seconds 10] [--rounds 3] [--concurrency 16]

One whole system (``modelserve up --detach``, the process runtime, authentication on, free
127.0.0.1 ports) serves one iris model version behind two serving endpoints: ``bench-cap-off``
without ``auto_capture_config`` and ``bench-cap-on`` capturing every request
(``sampling_fraction`` 1, the most expensive setting). Both reach the very same scoring server,
so the only difference between them is the capture: Nginx's capture line, the scoring server's
spool record and the reconciler's ingester turning both into rows.

wrk sends the same single-row ``dataframe_split`` body with the admin's token, alternating off
and on for ``--rounds`` rounds so that a machine whose load drifts during the run touches both
alike; the best round of each is compared (the noise on a shared machine only ever slows a
round). It prints requests per second, p50 and p99 for each, the cost of capture, and the rows
the ingester stored against the requests wrk counted. Bounded: every load run lasts
``--seconds``, every wait has a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import requests

from tests.benchmarks import wrk
from tests.e2e.conftest import System, registrar, running_system

MODEL = "bench-cap-iris"
TICK = os.sysconf("SC_CLK_TCK")
OFF, ON = "bench-cap-off", "bench-cap-on"


def _create(system: System, name: str, capture: bool) -> None:
    config: dict[str, object] = {"served_entities": [{"entity_name": MODEL, "entity_version": "1",
                                                      "workload_size": "Small", "scale_to_zero_enabled": False}]}
    if capture:
        config["auto_capture_config"] = {"enabled": True, "sampling_fraction": 1.0}
    r = system.raw.post(f"{system.url}/api/2.0/serving-endpoints", json={"name": name, "config": config},
                        headers={"Authorization": f"Bearer {system.token}"}, timeout=30)
    r.raise_for_status()

    def ready() -> bool:
        got = system.raw.get(f"{system.url}/api/2.0/serving-endpoints/{name}",
                             headers={"Authorization": f"Bearer {system.token}"}, timeout=30)
        return got.status_code == 200 and got.json()["state"]["ready"] == "READY"

    system.wait_for(f"{name} READY", ready, timeout=900)


def _rows(system: System) -> int:
    r = system.raw.get(f"{system.url}/api/2.0/modelserve/serving-endpoints/{ON}/inference-table",
                       params={"format": "jsonl"}, headers={"Authorization": f"Bearer {system.token}"}, timeout=300)
    r.raise_for_status()
    return len(r.text.splitlines())


def _role(argv: str) -> str:
    for needle, role in (("wrk", "wrk"), ("nginx", "nginx"), ("supervisor.reconciler", "reconciler"),
                         ("scoring", "scoring servers"), ("gunicorn", "api"), ("supervisor.api", "api")):
        if needle in argv:
            return role
    return "other"


def cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by every process on the machine, by its part in the system: where
    a round's cores went (the benchmark wants the machine to itself)."""
    out: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        role = _role(argv)
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True).frame
    iris.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width", "target"]
    with tempfile.TemporaryDirectory(prefix="ms-bench-capture-") as tmp, running_system(Path(tmp)) as system:
        work = Path(tmp) / "bench"
        work.mkdir()
        registrar(system, iris)(MODEL)
        for name, capture in ((OFF, False), (ON, True)):
            _create(system, name, capture)
        x = iris.drop(columns=["target"]).head(1)
        body = work / "one-row.json"
        body.write_text(json.dumps({"dataframe_split": {"columns": list(x.columns), "data": x.values.tolist()}}))
        headers = [("Authorization", f"Bearer {system.token}"), ("Content-Type", "application/json")]
        urls = {name: f"{system.url}/serving-endpoints/{name}/invocations" for name in (OFF, ON)}
        for url in urls.values():  # both paths warm, and both answer
            ok = requests.post(url, data=body.read_bytes(), headers=dict(headers), timeout=60)
            assert ok.status_code == 200, ok.text[:300]
        rows_before = _rows(system)
        results: dict[str, list[tuple[float, float, float, int]]] = {OFF: [], ON: []}
        cpu: dict[str, dict[str, float]] = {OFF: {}, ON: {}}
        for i in range(args.rounds):
            for name in (OFF, ON) if i % 2 == 0 else (ON, OFF):
                before = cpu_by_role()
                results[name].append(wrk.run(urls[name], body, args.concurrency, args.seconds, work, headers))
                for role, used in cpu_by_role().items():
                    cpu[name][role] = cpu[name].get(role, 0.0) + used - before.get(role, 0.0)
                rps, p50, p99, errors = results[name][-1]
                print(f"round {i + 1} {name:14} {rps:8.0f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  "
                      f"errors {errors}", flush=True)
        sent = round(sum(r[0] for r in results[ON]) * args.seconds)  # wrk's own count, from its rate
        # The ingester yields to scoring under load (supervisor/capture/ingester.py): how long
        # after the last load run its rows are all stored.
        load_ended = time.monotonic()
        deadline = load_ended + 300
        stored, last, settled_at = _rows(system) - rows_before, -1, load_ended
        while stored != last and time.monotonic() < deadline:  # the ingester polls every second
            time.sleep(3)
            last, stored = stored, _rows(system) - rows_before
            if stored != last:
                settled_at = time.monotonic()
        best = {name: max(rs, key=lambda r: r[0]) for name, rs in results.items()}
        print(f"\ncapture on/off, single row, c={args.concurrency}, {args.rounds} rounds of {args.seconds} s, "
              "best round each, through the gateway with a token:")
        for name in (OFF, ON):
            rps, p50, p99, errors = best[name]
            print(f"  {name:14} {rps:8.0f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")
        roles = sorted({*cpu[OFF], *cpu[ON]})
        print("  CPU seconds per 1,000 requests, all rounds (where the cores went):")
        for name in (OFF, ON):
            answered = sum(r[0] for r in results[name]) * args.seconds / 1000
            print(f"    {name:14} " + "  ".join(f"{role} {cpu[name].get(role, 0.0) / answered:.2f}"
                                                for role in roles))
        cost = 1 - best[ON][0] / best[OFF][0]
        print(f"  cost of capture: {cost * 100:+.1f}% req/s (bar: at most 10%), p99 x{best[ON][2] / best[OFF][2]:.2f}")
        print(f"  rows stored for the capture runs: {stored} (wrk answered about {sent}; "
              f"errors off/on {sum(r[3] for r in results[OFF])}/{sum(r[3] for r in results[ON])}), "
              f"the last of them stored {settled_at - load_ended:.0f} s after the load ended "
              f"(the last round was {'on' if (args.rounds - 1) % 2 == 0 else 'off'})")


if __name__ == "__main__":
    main()
