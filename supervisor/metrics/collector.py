"""The one process that turns the gateway's metrics log into aggregates: the reconciler.

A single reader (the reconciler is a singleton) means no two processes count a line, and the
API workers only read the saved aggregates. It polls once a second, the log's flush interval,
and writes to the store only when it read something.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from supervisor import naming
from supervisor.logpoller import poll_until
from supervisor.metrics.accesslog import LogTail, parse_line
from supervisor.metrics.activity import Activity
from supervisor.metrics.exposition import load_state, save_state
from supervisor.metrics.series import MetricsState, resolve
from supervisor.settings import Settings
from supervisor.store import Deployment, Store

log = logging.getLogger("modelserve.metrics")


class Collector:
    def __init__(self, settings: Settings, store: Store, reopen: Callable[[], bool],
                 activity: Activity | None = None) -> None:
        self.store = store
        self.activity = activity or Activity()
        self.tail = LogTail(settings.metrics_log, reopen)
        self.state: MetricsState | None = None

    def poll(self) -> int:
        """Read what Nginx wrote since the last poll; returns the number of requests counted."""
        if self.state is None:
            self.state = load_state(self.store)
        lines, pos = self.tail.read(self.state.position)
        if not lines and pos == self.state.position:
            return 0
        deps: dict[str, list[Deployment]] = defaultdict(list)
        upstreams: dict[str, tuple[str, str]] = {}
        for d in self.store.deployments():
            deps[d.model].append(d)
            upstreams[naming.upstream_name(d.model, d.version)] = (d.model, d.version)
        counted = 0
        for line in lines:
            access = parse_line(line)
            if access is not None:
                key = resolve(access, upstreams, deps)
                self.state.observe(key, access)
                counted += 1
                if key is not None and key.version:
                    self.activity.seen(key.model, key.version, access.at)
                elif access.endpoint and access.target == "pending":
                    self.activity.asked(access.endpoint, access.entity, access.at)
        self.state.position = pos
        self.state.prune(int(time.time() * 1000))
        save_state(self.store, self.state)
        return counted

    def forget(self) -> None:
        """Start again from what was committed."""
        self.state = None

    def run(self, stop: threading.Event, every: float = 1.0) -> None:
        poll_until(stop, every, self.poll, self.forget, log, "reading the metrics log")
