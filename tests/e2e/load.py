"""A steady load for end-to-end fault tests: one thread sending scoring requests without pause,
each on a new connection (as the seed's clients do), counting every answer that is not a 200 with
what it was. Bounded: it stops by itself after ``max_seconds`` even if a test forgets to stop it.
Used as a context manager around the fault, so a test asserts ``load.failures == []``."""

from __future__ import annotations

import threading
import time
from typing import Any

import requests


class Load:
    """Requests without pause to the given URLs from one thread, each on a new connection (as the
    seed's clients do), counting every answer that is not a 200. Bounded: stops by itself."""

    def __init__(self, urls: list[str], rows: list[dict[str, Any]], max_seconds: float = 900.0,
                 headers: dict[str, str] | None = None) -> None:
        self.urls, self.rows, self.max_seconds = urls, rows, max_seconds
        # Exact headers (a token) go through a session that ignores netrc, which would replace them.
        self.headers = headers
        self.ok = 0
        self.slowest = 0.0  # seconds: the longest answer, for the records in docs/
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            url = self.urls[i % len(self.urls)]
            i += 1
            started = time.monotonic()
            try:
                if self.headers is None:
                    r = requests.post(url, json=self.rows, timeout=30)
                else:
                    raw = requests.Session()
                    raw.trust_env = False
                    with raw:
                        r = raw.post(url, json=self.rows, headers=self.headers, timeout=30)
                self.slowest = max(self.slowest, time.monotonic() - started)
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{url}: {r.status_code} {r.text[:200]}")
            except requests.RequestException as exc:
                self.failures.append(f"{url}: {exc}")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
