"""Drive Debian's ``wrk`` from Python: one bounded run against one URL, parsed into numbers.

wrk is used for every server in a benchmark so the load generator is never the difference.
Extra headers (``--header 'Authorization: Bearer ...'``) go to every request of the run, which is
how the full path with authentication on is measured without changing anything else.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{headers}
wrk.body = io.open("{body}", "rb"):read("*a")
"""


@dataclass
class Result:
    target: str
    model: str
    rows: int
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rows_per_s(self) -> float:
        return self.rps * self.rows


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"a header is 'Name: value', not {text!r}")
    return name.strip(), value.strip()


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def parse_output(out: str) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) from ``wrk --latency`` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket:
        errors += sum(int(n) for n in socket.groups())
    return rps, p50, p99, errors


def run(url: str, body: Path, concurrency: int, seconds: int, work: Path,
        headers: list[tuple[str, str]] | None = None) -> tuple[float, float, float, int]:
    lines = "\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers or [])
    script = work / f"{body.stem}.lua"
    script.write_text(LUA.format(body=body, headers=lines))
    # --timeout: a slow answer is measured as latency, not dropped as a "timeout" error after 2 s.
    out = subprocess.run(["wrk", "-t", str(min(concurrency, 2)), "-c", str(concurrency), "-d", f"{seconds}s",
                          "--timeout", "30s", "--latency", "-s", str(script), url], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    return parse_output(out)
