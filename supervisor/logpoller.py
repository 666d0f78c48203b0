"""The loop of the reconciler's log readers (the metrics collector, the inference-table
ingester): a poll every ``every`` seconds until ``stop``; a poll that fails is logged and the
reader forgets what it held in memory, so that the next poll starts again from what it last
committed to the store (never from a half-applied read).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


def poll_until(stop: threading.Event, every: float, poll: Callable[[], object], forget: Callable[[], None],
               log: logging.Logger, what: str) -> None:
    while not stop.wait(every):
        try:
            poll()
        except Exception:
            log.exception("%s failed; retrying", what)
            forget()
