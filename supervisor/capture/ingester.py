"""The one process that turns the gateway's capture log and the versions' spools into rows: the
reconciler (a singleton, like the metrics collector beside it).

Each poll reads, in this order: the capture log's new lines (from the offset saved with the last
commit), then every version's spool, retired first (renamed aside, ``spool.retire``), so that the
record of every request whose line was read is already in hand (the scoring server wrote it
before answering, Nginx logs after). Rows, the records still waiting for their line (kept in the
store, because their file is about to go), and the new log offset are committed in one
transaction; only then are the retired spool files deleted. A killed ingester therefore either
committed (and finds its offset, its pending records and maybe a retired file it already read,
whose replayed rows the store's key refuses) or did not (and reads the same lines and files
again). Nothing is lost, nothing is written twice.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor import naming
from supervisor.capture.rows import Logged, join, parse_logged
from supervisor.capture.spool import SpoolRecord, read_records, retire
from supervisor.logpoller import poll_until
from supervisor.metrics.accesslog import LogTail, Position
from supervisor.settings import Settings
from supervisor.store import Store

log = logging.getLogger("modelserve.capture")

STATE_KEY = "capture"
# A record whose line has not come after this long belongs to no request the gateway sampled
# (a forged one, or one whose line Nginx never wrote): it is dropped.
PENDING_SECONDS = 600.0
# Per version (upstream), so that a model flooding its own spool with records of no request
# crowds out only its own: a record legitimately waits well under a second (its request's
# answer is being sent), so a few hundred cover any real load.
MAX_PENDING = 500
MAX_PENDING_BYTES = 32 << 20
# A model can write anything into its spool; past this, one poll reads no more of it.
MAX_SPOOL_BYTES = 256 << 20
RETENTION_EVERY = 3600.0


def read_all(path: Path) -> list[SpoolRecord]:
    """Every record of a retired (final) spool file, up to MAX_SPOOL_BYTES of it."""
    out: list[SpoolRecord] = []
    offset = 0
    while offset < MAX_SPOOL_BYTES:
        got, after = read_records(path, offset)
        out += got
        if after == offset:
            break
        offset = after
    return out


def _within_bounds(kept: list[tuple[str, str]], records: dict[tuple[str, str], SpoolRecord],
                   new: list[tuple[str, str]]) -> list[tuple[str, str, int, str | None]]:
    """The new waiting records that fit beside those still waiting, per upstream: at most
    MAX_PENDING records and MAX_PENDING_BYTES of bodies each."""
    count: dict[str, int] = {}
    size: dict[str, int] = {}
    for up, rid in kept:
        count[up] = count.get(up, 0) + 1
        size[up] = size.get(up, 0) + len(records[(up, rid)].body or "")
    out = []
    for up, rid in new:
        rec = records[(up, rid)]
        grown = size.get(up, 0) + len(rec.body or "")
        if count.get(up, 0) < MAX_PENDING and grown <= MAX_PENDING_BYTES:
            count[up] = count.get(up, 0) + 1
            size[up] = grown
            out.append((up, rid, rec.size, rec.body))
    return out


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


# Ingesting is bookkeeping: when scoring saturates the cores it waits, and catches up after (the
# lines and spools wait on disk, nothing is lost). Not lower: a thread starved inside its short
# store transaction would hold the store's write lock against the API.
INGEST_NICE = 10


def yield_to_scoring() -> None:
    """Lower the calling thread's CPU priority (Linux: a thread's own nice value)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), INGEST_NICE)
    except (OSError, AttributeError):
        pass  # not Linux, or not allowed: ingest at the process's priority


class Ingester:
    def __init__(self, settings: Settings, store: Store, reopen: Callable[[], bool]) -> None:
        self.settings = settings
        self.store = store
        self.tail = LogTail(settings.capture_log, reopen)
        self.position: Position | None = None
        self.last_retention = 0.0

    def _load(self) -> Position:
        raw = self.store.get_meta(STATE_KEY)
        try:
            saved = json.loads(raw) if raw else {}
            return Position(int(saved.get("inode", 0)), int(saved.get("offset", 0)))
        except (ValueError, TypeError, AttributeError):
            return Position()

    def poll(self, now: float | None = None) -> int:
        """One round; returns the rows added."""
        now = time.time() if now is None else now
        if self.position is None:
            self.position = self._load()
        lines, pos = self.tail.read(self.position)
        logged = [x for x in (parse_logged(line) for line in lines) if x is not None]

        pending = {(up, rid): (SpoolRecord(rid, size, body), seen)
                   for up, rid, size, body, seen in self.store.capture_pending()}
        records: dict[tuple[str, str], SpoolRecord] = {k: rec for k, (rec, _) in pending.items()}
        fresh: dict[tuple[str, str], SpoolRecord] = {}
        files: list[Path] = []
        for folder in sorted(self.settings.spool_dir.glob("*")) if self.settings.spool_dir.is_dir() else []:
            for live in sorted(folder.glob("*.spool")):
                if not _is_dir(live):
                    retire(live)
            for retired in sorted(folder.glob("*.spool.retired-*")):
                if _is_dir(retired):  # the model's own doing: never ours to read or delete
                    continue
                files.append(retired)
                upstream = retired.name.split(".spool", 1)[0]
                for rec in read_all(retired):
                    key = (upstream, rec.request_id)
                    if key not in records:  # the first record of an id wins
                        records[key] = fresh[key] = rec

        rows, used = self._rows(logged, records)
        cutoff = int((now - PENDING_SECONDS) * 1000)
        drop = [k for k, (_, seen) in pending.items() if k in used or seen < cutoff]
        dropped = set(drop)
        keep = _within_bounds([k for k in pending if k not in dropped], records,
                              [k for k in fresh if k not in used])
        if logged or drop or keep or files or pos != self.position:
            added = self.store.commit_capture(rows, keep, drop, STATE_KEY,
                                              json.dumps({"inode": pos.inode, "offset": pos.offset}))
        else:
            added = 0
        self.position = pos
        for f in files:
            f.unlink(missing_ok=True)
        self._retention(now)
        return added

    def _rows(self, logged: list[Logged], records: dict[tuple[str, str], SpoolRecord]
              ) -> tuple[list[dict[str, Any]], set[tuple[str, str]]]:
        if not logged:
            return [], set()
        versions = {naming.upstream_name(d.model, d.version): (d.model, d.version) for d in self.store.deployments()}
        endpoint_ids = {ep.name: ep.id for ep in self.store.endpoints()}
        return join(logged, records, versions, endpoint_ids)

    def _retention(self, now: float) -> None:
        days = self.settings.inference_table_retention_days
        if days <= 0 or now - self.last_retention < RETENTION_EVERY:
            return
        self.last_retention = now
        gone = self.store.delete_inference_rows(int((now - days * 86400) * 1000))
        if gone:
            log.info("inference tables: %d rows past %g days deleted", gone, days)

    def forget(self) -> None:
        """Start again from what was committed."""
        self.position = None

    def run(self, stop: threading.Event, every: float = 1.0) -> None:
        yield_to_scoring()
        poll_until(stop, every, self.poll, self.forget, log, "ingesting captured requests")
