"""The churn suite's load: a separate process that scores steadily and records every request.

It runs apart from the suite (``python -m tests.reliability.load``) so that the faults the suite
causes, and its own waiting, never pause the load. One thread per target URL sends requests one
after another, each on a NEW connection (``requests.request`` without a session, as the seed's
Python snippet and curl do): that is the client whose requests must never fail. A target named
``keepalive:...`` reuses one connection instead (a ``requests.Session``), to show what a client
that keeps connections open meets; the suite counts it apart.

Every request becomes one JSON line: send time (epoch seconds), target, HTTP status (0 when no
answer came) and, for failures, a short reason. Bounded: it stops at ``--seconds`` or as soon as
the stop file exists.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import IO, Any

import requests

KEEPALIVE = "keepalive:"


def _send(session: requests.Session | None, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    try:
        if session is None:
            r = requests.request("POST", url, data=body, headers=headers, timeout=30)
        else:
            r = session.post(url, data=body, headers=headers, timeout=30)
    except requests.RequestException as exc:
        return 0, f"{type(exc).__name__}: {str(exc)[:200]}"
    return r.status_code, "" if r.status_code == 200 else r.text[:200]


def _run(label: str, url: str, body: bytes, headers: dict[str, str], out: IO[str], lock: threading.Lock,
         until: float, stop: Path, pause: float) -> None:
    session: requests.Session | None = None
    if label.startswith(KEEPALIVE):
        session = requests.Session()
        session.trust_env = False
    i = 0
    while time.time() < until:
        # Looking for the stop file every request would cost a syscall per request for nothing.
        if i % 20 == 0 and stop.exists():
            return
        i += 1
        sent = time.time()
        status, why = _send(session, url, body, headers)
        line = json.dumps({"t": round(sent, 4), "d": round(time.time() - sent, 4), "u": label, "s": status,
                           "e": why})
        with lock:
            out.write(line + "\n")
            out.flush()
        if pause:
            time.sleep(pause)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", action="append", required=True, help="LABEL=URL (repeat); LABEL keepalive:... "
                   "reuses one connection")
    p.add_argument("--body", required=True, help="file with the JSON request body")
    p.add_argument("--token", required=True, help="bearer token sent with every request")
    p.add_argument("--out", required=True, help="JSON lines, one per request")
    p.add_argument("--seconds", type=float, required=True, help="hard deadline")
    p.add_argument("--stop-file", required=True)
    p.add_argument("--pause-ms", type=float, default=40.0, help="pause between two requests of one target")
    args = p.parse_args(argv)
    body = Path(args.body).read_bytes()
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"}
    until = time.time() + args.seconds
    lock = threading.Lock()
    stop = Path(args.stop_file)
    with open(args.out, "a") as out:
        threads: list[threading.Thread] = []
        for target in args.target:
            label, url = target.split("=", 1)
            t = threading.Thread(target=_run, args=(label, url, body, headers, out, lock, until, stop,
                                                    args.pause_ms / 1000), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(timeout=args.seconds + 60)
    return 0


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    raise SystemExit(main())
