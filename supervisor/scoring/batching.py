"""Adaptive micro-batching: concurrent requests to one version share one ``predict`` call.

A tiny model spends most of a request in fixed costs (the library's input validation, MLflow's
wrapper), not in the rows, so N single-row requests predicted together cost little more than one.
Request threads parse and validate their own input, then hand a DataFrame to one collector
thread per process and wait. The collector takes the first waiting request at once and adds
whatever else is already queued; it waits longer (at most ``window`` seconds) only while other
requests are known to be still parsing, so a lone client never waits for company. A batch holds
at most ``max_rows`` rows. Only frames with the same columns in the same order and the same dtypes
are merged (a concat of anything else would change dtypes), so requests with other column orders
form their own batch. Each caller gets exactly its own slice of the answer; if the merged predict
fails or its answer cannot be split by rows, every request in it is predicted alone, so a bad
request fails by itself. Imports nothing from the supervisor (runs in the model's environment).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

if __package__:
    from .frames import column_dtypes, merge_frames
else:  # pragma: no cover - exercised by the real server processes
    from frames import column_dtypes, merge_frames  # type: ignore[import-not-found,no-redef]

# Flavors whose predictions for a row depend on that row only.
ROW_INDEPENDENT = ("mlflow.sklearn", "mlflow.xgboost", "mlflow.lightgbm")


class _Job:
    __slots__ = ("frame", "key", "done", "result", "error")

    def __init__(self, frame: pd.DataFrame, key: tuple[Any, ...]) -> None:
        self.frame = frame
        self.key = key
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


def frame_key(frame: pd.DataFrame) -> tuple[Any, ...]:
    return tuple(frame.columns), column_dtypes(frame)


def split_rows(output: Any, sizes: list[int]) -> list[Any]:
    """Cut a batch's predictions back into each request's rows; ValueError when it cannot."""
    total = sum(sizes)
    if isinstance(output, (pd.DataFrame, pd.Series)):
        if len(output) != total:
            raise ValueError("predictions do not have one entry per row")
        cut = output.iloc
    elif isinstance(output, np.ndarray) and output.ndim >= 1 or isinstance(output, list):
        if len(output) != total:
            raise ValueError("predictions do not have one entry per row")
        cut = output  # type: ignore[assignment]
    else:
        raise ValueError(f"cannot split a {type(output).__name__} by rows")
    parts, start = [], 0
    for n in sizes:
        parts.append(cut[start:start + n])
        start += n
    return parts


class Batcher:
    def __init__(self, predict: Callable[[pd.DataFrame], Any], max_rows: int = 1000, window: float = 0.002) -> None:
        self.predict = predict
        self.max_rows = max_rows
        self.window = window
        self.queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._parsing = 0  # requests announced but not yet queued
        self._pid = 0
        self._carry: _Job | None = None
        self._collecting = False  # the collector holds requests it has not answered yet
        self._inline_running = False  # a lone request is being predicted in its own thread
        self.batches = 0  # predict calls made for merged batches (for tests and logs)
        self.inline = 0  # requests predicted in their own thread, nothing to batch them with

    # --- the request side ----------------------------------------------------------------
    def announce(self) -> None:
        """A request is being parsed and may join the next batch."""
        with self._lock:
            self._parsing += 1

    def withdraw(self) -> None:
        """An announced request will not be submitted (bad input, params, ...)."""
        with self._lock:
            self._parsing -= 1

    def submit(self, frame: pd.DataFrame, announced: bool = True) -> Any:
        """Predict ``frame`` as part of a batch; returns its own predictions or raises its own error."""
        self._ensure_collector()
        job = _Job(frame, ())
        with self._lock:
            if announced:
                self._parsing -= 1
            # Nobody to batch with: predict in this thread, sparing a lone client the hand-over.
            # While it predicts, later requests queue up for the collector instead.
            alone = (self._parsing <= 0 and self.queue.empty() and not self._collecting
                     and not self._inline_running)
            if alone:
                self._inline_running = True
            else:
                job.key = frame_key(frame)
                self.queue.put(job)
        if alone:
            self.inline += 1
            try:
                return self.predict(frame)
            finally:
                self._inline_running = False
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _ensure_collector(self) -> None:
        # Threads do not survive fork: each pre-forked worker starts its own collector.
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    threading.Thread(target=self._collect, name="batcher", daemon=True).start()
                    self._pid = os.getpid()

    # --- the collector ---------------------------------------------------------------------
    def _collect(self) -> None:
        while True:
            first = self._carry or self.queue.get()
            self._carry = None
            self._collecting = True
            batch, rows = [first], len(first.frame)
            deadline = time.monotonic() + self.window
            while rows < self.max_rows:
                try:
                    job = self.queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if self._parsing <= 0 or remaining <= 0:
                        break
                    try:
                        job = self.queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if rows + len(job.frame) > self.max_rows:
                    self._carry = job
                    break
                batch.append(job)
                rows += len(job.frame)
            try:
                self.run(batch)
            except BaseException as exc:  # never leave a caller waiting on a collector that failed
                for job in batch:
                    if not job.done.is_set():
                        job.error = exc
                        job.done.set()
            finally:
                self._collecting = self._carry is not None

    def run(self, batch: list[_Job]) -> None:
        groups: dict[tuple[Any, ...], list[_Job]] = {}
        for job in batch:
            groups.setdefault(job.key, []).append(job)
        for jobs in groups.values():
            if len(jobs) > 1:
                try:
                    merged = merge_frames([j.frame for j in jobs])
                    self.batches += 1
                    parts = split_rows(self.predict(merged), [len(j.frame) for j in jobs])
                except Exception:
                    pass  # fall back below: each request alone, so only a bad one fails
                else:
                    for job, part in zip(jobs, parts, strict=True):
                        job.result = part
                        job.done.set()
                    continue
            for job in jobs:
                try:
                    job.result = self.predict(job.frame)
                except BaseException as exc:  # handed to the request's own thread
                    job.error = exc
                job.done.set()
