"""Which versions were asked for lately: the record scale to zero decides on.

Filled by the metrics collector from the gateway's log (the one place every scoring request is
seen, whichever route it took), read by the reconciler in the same process. Kept in memory only:
a restarted reconciler knows no requests, and counts every version as active from its own
start, so a restart never puts anything to sleep early. A request to a sleeping entity is
answered by the gateway (503, Retry-After) and logged with its endpoint and entity; seeing it
here is what wakes the entity, and ``on_ask`` has the reconciler tick at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Activity:
    def __init__(self, on_ask: Callable[[], None] = lambda: None) -> None:
        self.started = time.time()
        self.on_ask = on_ask
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}  # (model, version) -> last request that reached it
        self._asked: dict[tuple[str, str], float] = {}  # (endpoint, entity) -> last request answered "waking"

    def seen(self, model: str, version: str, at: float) -> None:
        with self._lock:
            self._last[(model, version)] = max(at, self._last.get((model, version), 0.0))

    def asked(self, endpoint: str, entity: str, at: float) -> None:
        with self._lock:
            self._asked[(endpoint, entity)] = at
        self.on_ask()

    def last_seen(self) -> dict[tuple[str, str], float]:
        with self._lock:
            return dict(self._last)

    def take_asked(self) -> set[tuple[str, str]]:
        """The entities asked for since the last call (each wake is acted on once)."""
        with self._lock:
            out, self._asked = set(self._asked), {}
        return out
