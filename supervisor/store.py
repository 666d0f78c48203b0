"""The supervisor's durable memory: enabled models, per-version deployments, events, tokens, settings,
and each served model's box (its own settings and its uid).

Everything that must survive a restart of every process lives here, never only in memory.
SQLAlchemy Core keeps it portable: SQLite (WAL, busy timeout, so several API workers and the
reconciler can share one file) by default, Postgres in compose.yaml (several containers share it),
any SQLAlchemy URL otherwise. Nothing here relies on one dialect: every write that can meet a
concurrent one (two processes creating the schema, enabling a model, choosing a port or a uid) is
plain SQL whose loser is refused by a constraint and tries again (``_retrying``), never an
``INSERT OR ...`` or an upsert of one database's own.
"""

from __future__ import annotations

import json
import operator
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.types import BigInteger

T = TypeVar("T")

metadata = MetaData()

served_models = Table(
    "served_models",
    metadata,
    Column("name", String(512), primary_key=True),
    Column("enabled_at", BigInteger, nullable=False),
)

deployments = Table(
    "deployments",
    metadata,
    Column("model", String(512), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("state", String(32), nullable=False),
    Column("state_message", Text, nullable=False, default=""),
    Column("port", Integer, nullable=True, unique=True),
    Column("env_hash", String(64), nullable=True),
    Column("python", Text, nullable=True),
    Column("model_dir", Text, nullable=True),
    Column("stage", String(32), nullable=False, default="None"),
    Column("aliases", Text, nullable=False, default="[]"),
    Column("updated", BigInteger, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(512), nullable=False, index=True),
    Column("timestamp", BigInteger, nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("version", String(64), nullable=True),
    Column("message", Text, nullable=False),
    Column("internal", Boolean, nullable=False, default=False),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)

# Personal access tokens: only a hash of each is kept (supervisor/auth/tokens.py).
tokens = Table(
    "tokens",
    metadata,
    Column("token_id", String(32), primary_key=True),
    Column("owner", String(256), nullable=False, index=True),
    Column("comment", Text, nullable=False, default=""),
    Column("token_hash", String(64), nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("expires", BigInteger, nullable=True),
    Column("revoked", BigInteger, nullable=True),
)

# A served model's own box settings, which only MANAGE users change (never registry tags, which EDIT
# users can set). NULL: the settings' default. Kept when serving is disabled, so enabling it again
# brings the same box back. A new table, so create_all adds it to an existing database.
model_boxes = Table(
    "model_boxes",
    metadata,
    Column("model", String(512), primary_key=True),
    Column("network", Boolean, nullable=False, default=False),
    Column("memory_mb", Integer, nullable=True),
    Column("cpus", Float, nullable=True),
    Column("max_processes", Integer, nullable=True),
    Column("updated", BigInteger, nullable=False),
    Column("updated_by", String(256), nullable=False, default=""),
)

# Replicas of each version of a served model (swarm runtime), which only MANAGE users change, as
# the box. A table of its own, so create_all adds it to an existing database. No row: 1.
model_replicas = Table(
    "model_replicas",
    metadata,
    Column("model", String(512), primary_key=True),
    Column("replicas", Integer, nullable=False),
)

# The system uid (and gid, the same number) of each served model when the supervisor runs as root.
# Never freed: a uid given to one model and later to another would hand the second one whatever
# the first left owned by it.
model_uids = Table(
    "model_uids",
    metadata,
    Column("model", String(512), primary_key=True),
    Column("uid", Integer, nullable=False, unique=True),
    Column("allocated", BigInteger, nullable=False),
)

# Serving endpoints (the successor API, supervisor/api/endpoints.py). A config is kept as the JSON
# the API validated (supervisor/endpoints/config.py); the reconciler only reads it. At most one
# pending config per endpoint: a second update is refused by the conditional UPDATE in
# ``begin_config_update``, which holds across API workers without any lock of ours.
serving_endpoints = Table(
    "serving_endpoints",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(63), nullable=False, unique=True),
    Column("creator", String(256), nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    Column("tags", Text, nullable=False, default="[]"),
    Column("route_optimized", Boolean, nullable=False, default=False),
    Column("config", Text, nullable=True),  # the config serving now; NULL until the first is ready
    Column("config_version", Integer, nullable=True),
    Column("pending_config", Text, nullable=True),
    Column("pending_version", Integer, nullable=True),
    Column("pending_start", BigInteger, nullable=True),
    Column("config_update", String(32), nullable=False),
    Column("last_version", Integer, nullable=False, default=0),  # config versions given out so far
    Column("failed_config", Text, nullable=True),  # the last config that failed, for its build logs
    Column("update_message", Text, nullable=False, default=""),
)

# Direct grants on an endpoint (CAN_VIEW, CAN_QUERY, CAN_MANAGE), by MLflow user name.
endpoint_grants = Table(
    "endpoint_grants",
    metadata,
    Column("endpoint_id", String(32), primary_key=True),
    Column("user_name", String(256), primary_key=True),
    Column("level", String(16), nullable=False),
)

# An endpoint's rate limits (supervisor/endpoints/ratelimits.py), as one validated JSON list; a
# table of its own so that existing databases get it from create_all, with no column migration.
endpoint_rate_limits = Table(
    "endpoint_rate_limits",
    metadata,
    Column("endpoint_id", String(32), primary_key=True),
    Column("limits", Text, nullable=False),
)

# Inference tables (supervisor/capture/): one row per sampled request of an endpoint with
# auto_capture_config on. The gateway's request id is the key, so a line read twice (an ingester
# killed before it saved its offset) is refused by the constraint, whatever the database.
inference_rows = Table(
    "inference_rows",
    metadata,
    Column("request_id", String(32), primary_key=True),
    Column("endpoint_id", String(32), nullable=False, index=True),
    Column("endpoint", String(63), nullable=False),
    Column("served_entity", String(63), nullable=False),
    Column("model", String(512), nullable=False),
    Column("version", String(64), nullable=False),
    Column("date", String(10), nullable=False),
    Column("timestamp_ms", BigInteger, nullable=False, index=True),
    Column("status_code", Integer, nullable=False),
    Column("execution_time_ms", BigInteger, nullable=True),
    Column("sampling_fraction", Float, nullable=False),
    Column("client_request_id", Text, nullable=True),
    Column("request", Text, nullable=True),  # NULL: over 1 MB (request_truncated) or none
    Column("request_size", BigInteger, nullable=False),
    Column("request_truncated", Boolean, nullable=False),
    Column("response", Text, nullable=True),  # NULL: over 1 MB, or the model gave none (a 502)
    Column("response_size", BigInteger, nullable=True),
    Column("response_truncated", Boolean, nullable=False),
)
INFERENCE_COLUMNS = tuple(c.name for c in inference_rows.columns if c.name != "endpoint_id")

# Spool records read before the gateway's line of their request (it is written when the answer
# has been sent, the record before): kept here, not only in memory, because the spool file they
# came from is deleted once this is committed.
capture_pending = Table(
    "capture_pending",
    metadata,
    Column("upstream", String(128), primary_key=True),
    Column("request_id", String(32), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("body", Text, nullable=True),
    Column("seen", BigInteger, nullable=False),
)

# Config update states of an endpoint, exactly as the Databricks clients' enums spell them.
NOT_UPDATING = "NOT_UPDATING"
IN_PROGRESS = "IN_PROGRESS"
UPDATE_FAILED = "UPDATE_FAILED"

# Version states, as the legacy API names them.
PENDING = "VERSION_STATE_PENDING"
LAUNCHING = "VERSION_STATE_LAUNCHING"
READY = "VERSION_STATE_READY"
FAILED = "VERSION_STATE_FAILED"
# Scaled to zero: environment and files kept, no scoring server; its first request starts it.
ASLEEP = "VERSION_STATE_SCALED_TO_ZERO"
SCALE_TO_ZERO_KEY = "scale_to_zero:"  # meta key prefix: legacy serving of this model may scale to zero

MODEL_UPDATE = "MODEL_UPDATE"
VERSION_UPDATE = "VERSION_UPDATE"
ENDPOINT_UPDATED = "ENDPOINT_UPDATED"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Deployment:
    model: str
    version: str
    state: str
    state_message: str = ""
    port: int | None = None
    env_hash: str | None = None
    python: str | None = None
    model_dir: str | None = None
    stage: str = "None"
    aliases: list[str] = field(default_factory=list)
    updated: int = 0


@dataclass(frozen=True)
class Event:
    model: str
    timestamp: int
    event_type: str
    message: str
    version: str | None = None
    internal: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"timestamp": self.timestamp, "event_type": self.event_type, "message": self.message}
        if self.version is not None:
            out["endpoint_version_name"] = self.version
        if self.internal:
            out["internal"] = True
        return out


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    owner: str
    comment: str
    token_hash: str
    created: int
    expires: int | None
    revoked: int | None


@dataclass(frozen=True)
class BoxSettings:
    """A served model's own box settings; None means the settings' default."""

    network: bool = False
    memory_mb: int | None = None
    cpus: float | None = None
    max_processes: int | None = None
    replicas: int | None = None
    updated: int = 0
    updated_by: str = ""


BOX_FIELDS = ("network", "memory_mb", "cpus", "max_processes", "replicas")


@dataclass(frozen=True)
class ServingEndpoint:
    id: str
    name: str
    creator: str
    created: int
    updated: int
    tags: list[dict[str, str]]
    route_optimized: bool
    config: dict[str, Any] | None
    config_version: int | None
    pending_config: dict[str, Any] | None
    pending_version: int | None
    pending_start: int | None
    config_update: str
    failed_config: dict[str, Any] | None
    update_message: str

    def configs(self) -> list[dict[str, Any]]:
        """The configs whose entities must run: the one serving and the one rolling out."""
        return [c for c in (self.config, self.pending_config) if c is not None]


def endpoint_models(endpoints: Iterable[ServingEndpoint]) -> set[str]:
    """The registered models the endpoints' serving and pending configs name (the plan's and the
    store's one answer to "does an endpoint need this model")."""
    return {e["entity_name"] for ep in endpoints for cfg in ep.configs() for e in cfg["served_entities"]}


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def _row_to_endpoint(r: Any) -> ServingEndpoint:
    return ServingEndpoint(
        id=r.id, name=r.name, creator=r.creator, created=r.created, updated=r.updated,
        tags=json.loads(r.tags or "[]"), route_optimized=bool(r.route_optimized),
        config=_loads(r.config), config_version=r.config_version,
        pending_config=_loads(r.pending_config), pending_version=r.pending_version, pending_start=r.pending_start,
        config_update=r.config_update, failed_config=_loads(r.failed_config), update_message=r.update_message or "",
    )


class UidRangeExhausted(RuntimeError):
    """Every uid of MODELSERVE_MODEL_UID_START..END is taken: no new model can get its own."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=10000")
    # Switching a new file to WAL can answer "locked" at once, without the busy wait, while another
    # process switches it too (every process opens the file at start-up); WAL is the file's lasting
    # mode, so the second switch finds it done.
    deadline = time.monotonic() + 10
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


# How each database refuses a CREATE that another process's CREATE of the same object beat:
# SQLite and MySQL say "already exists"; Postgres says so too, or, when both got past its catalog
# check, fails the second on the unique index of its catalog ("duplicate key value").
_CREATED_MEANWHILE = ("already exists", "duplicate key value")


def _create_schema(engine: Engine, attempts: int = 20) -> None:
    """Creates missing tables; safe when several processes open a new database at once.

    create_all checks, then creates: between the two another process (the API, the reconciler and
    MLflow's auth plugin all start together) may create the same table. Checking again after such a
    refusal finds it there, so the loser retries instead of failing to boot.
    """
    for attempt in range(attempts):
        try:
            metadata.create_all(engine)
            return
        except DBAPIError as exc:
            if not any(words in str(exc.orig) for words in _CREATED_MEANWHILE) or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))


def _insert_many(c: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Many rows into ``table`` through the driver's own ``executemany``: per row, SQLAlchemy
    Core's insert spends more CPU on binding parameters than the database spends storing it, and
    this runs once per captured request, on the machine that scores it. Core's insert where the
    driver's parameter style is not a positional one this knows."""
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(c.dialect.paramstyle)
    if mark is None:
        c.execute(insert(table), rows)
        return
    names = [col.name for col in table.columns]
    quote = c.dialect.identifier_preparer.quote
    sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
           f"VALUES ({', '.join([mark] * len(names))})")
    c.exec_driver_sql(sql, list(map(operator.itemgetter(*names), rows)))


class Store:
    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url, future=True, pool_pre_ping=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _create_schema(self.engine)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # --- served models -------------------------------------------------------------------
    def enable(self, name: str) -> bool:
        """Returns False when the model was already enabled (also when another process enabled
        it between our check and our insert: the primary key refuses ours, the retry finds it)."""

        def once() -> bool:
            with self._tx() as c:
                if c.execute(select(served_models.c.name).where(served_models.c.name == name)).first():
                    return False
                c.execute(insert(served_models).values(name=name, enabled_at=now_ms()))
                return True

        return _retrying(once)

    def disable(self, name: str) -> bool:
        with self._tx() as c:
            return c.execute(delete(served_models).where(served_models.c.name == name)).rowcount > 0

    def is_enabled(self, name: str) -> bool:
        with self._tx() as c:
            return c.execute(select(served_models.c.name).where(served_models.c.name == name)).first() is not None

    def enabled_models(self) -> list[str]:
        with self._tx() as c:
            return [r[0] for r in c.execute(select(served_models.c.name).order_by(served_models.c.name))]

    # --- events --------------------------------------------------------------------------
    def add_event(
        self, model: str, event_type: str, message: str, version: str | None = None, internal: bool = False
    ) -> None:
        with self._tx() as c:
            c.execute(
                insert(events).values(
                    model=model,
                    timestamp=now_ms(),
                    event_type=event_type,
                    version=version,
                    message=message,
                    internal=internal,
                )
            )

    def events(self, model: str, version: str | None = None, limit: int = 1000) -> list[Event]:
        """Newest first."""
        q = select(events).where(events.c.model == model)
        if version is not None:
            q = q.where(events.c.version == version)
        q = q.order_by(events.c.id.desc()).limit(limit)
        with self._tx() as c:
            return [
                Event(
                    model=r.model,
                    timestamp=r.timestamp,
                    event_type=r.event_type,
                    message=r.message,
                    version=r.version,
                    internal=bool(r.internal),
                )
                for r in c.execute(q)
            ]

    # --- deployments ---------------------------------------------------------------------
    @staticmethod
    def _row_to_deployment(r: Any) -> Deployment:
        return Deployment(
            model=r.model,
            version=r.version,
            state=r.state,
            state_message=r.state_message or "",
            port=r.port,
            env_hash=r.env_hash,
            python=r.python,
            model_dir=r.model_dir,
            stage=r.stage or "None",
            aliases=json.loads(r.aliases or "[]"),
            updated=r.updated,
        )

    def deployments(self, model: str | None = None) -> list[Deployment]:
        q = select(deployments)
        if model is not None:
            q = q.where(deployments.c.model == model)
        with self._tx() as c:
            rows = [self._row_to_deployment(r) for r in c.execute(q)]
        return sorted(rows, key=lambda d: (d.model, _version_key(d.version)))

    def deployment(self, model: str, version: str) -> Deployment | None:
        q = select(deployments).where(and_(deployments.c.model == model, deployments.c.version == version))
        with self._tx() as c:
            r = c.execute(q).first()
        return self._row_to_deployment(r) if r else None

    def upsert_deployment(self, model: str, version: str, **fields: Any) -> None:
        if "aliases" in fields:
            fields["aliases"] = json.dumps(sorted(fields["aliases"]))
        fields["updated"] = now_ms()
        where = and_(deployments.c.model == model, deployments.c.version == version)

        def once() -> None:
            # Update, else insert; an insert that another process's beat is refused by the primary
            # key, and the retry updates the row it made.
            with self._tx() as c:
                if c.execute(update(deployments).where(where).values(**fields)).rowcount == 0:
                    c.execute(insert(deployments).values(model=model, version=version,
                                                         **{"state": PENDING, **fields}))

        _retrying(once)

    def delete_deployment(self, model: str, version: str) -> None:
        with self._tx() as c:
            c.execute(
                delete(deployments).where(and_(deployments.c.model == model, deployments.c.version == version))
            )

    def delete_deployments(self, model: str) -> None:
        with self._tx() as c:
            c.execute(delete(deployments).where(deployments.c.model == model))

    def allocate_port(self, model: str, version: str, start: int, end: int, is_free: Any = None) -> int:
        """A port for this version, kept for its lifetime; unique across every deployment.

        Two deploys choosing at once can both read the same port as unused (neither holds a
        write lock while it reads); the unique column refuses the second, which then chooses
        again from what is now recorded."""
        return _retrying(lambda: self._allocate_port_once(model, version, start, end, is_free))

    def _allocate_port_once(self, model: str, version: str, start: int, end: int, is_free: Any) -> int:
        with self._tx() as c:
            where = and_(deployments.c.model == model, deployments.c.version == version)
            row = c.execute(select(deployments.c.port).where(where)).first()
            if row and row[0]:
                return int(row[0])
            used = {r[0] for r in c.execute(select(deployments.c.port).where(deployments.c.port.is_not(None)))}
            for port in range(start, end + 1):
                if port in used or (is_free is not None and not is_free(port)):
                    continue
                c.execute(update(deployments).where(where).values(port=port, updated=now_ms()))
                return port
        raise RuntimeError(f"no free port left in {start}-{end}")

    # --- boxes ---------------------------------------------------------------------------
    def box_settings(self, model: str) -> BoxSettings:
        with self._tx() as c:
            r = c.execute(select(model_boxes).where(model_boxes.c.model == model)).first()
            n = c.execute(select(model_replicas.c.replicas).where(model_replicas.c.model == model)).scalar()
        if r is None:
            return BoxSettings(replicas=n)
        return BoxSettings(network=bool(r.network), memory_mb=r.memory_mb, cpus=r.cpus,
                           max_processes=r.max_processes, replicas=n, updated=r.updated, updated_by=r.updated_by or "")

    def update_box_settings(self, model: str, changes: dict[str, Any], by: str) -> BoxSettings:
        """Sets the ``BOX_FIELDS`` in ``changes`` (None: back to the default); the others stay."""
        unknown = set(changes) - set(BOX_FIELDS)
        if unknown:
            raise ValueError(f"not box settings: {sorted(unknown)}")
        values = {k: v for k, v in changes.items() if k != "replicas"} | {"updated": now_ms(), "updated_by": by}

        def once() -> None:
            # Two API workers saving the first settings of a model at once: the primary key
            # refuses the second insert, whose retry then finds the row and updates it.
            with self._tx() as c:
                where = model_boxes.c.model == model
                if c.execute(update(model_boxes).where(where).values(**values)).rowcount == 0:
                    c.execute(insert(model_boxes).values(model=model, **values))
                if "replicas" in changes:
                    c.execute(delete(model_replicas).where(model_replicas.c.model == model))
                    if changes["replicas"] is not None:
                        c.execute(insert(model_replicas).values(model=model, replicas=changes["replicas"]))

        _retrying(once)
        return self.box_settings(model)

    def model_uid(self, model: str) -> int | None:
        with self._tx() as c:
            row = c.execute(select(model_uids.c.uid).where(model_uids.c.model == model)).first()
        return int(row[0]) if row else None

    def allocate_uid(self, model: str, start: int, end: int, is_free: Callable[[int], bool] | None = None) -> int:
        """The model's own uid: the one it has, else the lowest unused one of ``start..end``.

        Race-safe like ``allocate_port``: two processes choosing at once can read the same uid as
        unused; the unique column refuses the second, which chooses again (and a second
        allocation for the same model meets the primary key and then finds the first's uid)."""
        return _retrying(lambda: self._allocate_uid_once(model, start, end, is_free))

    def _allocate_uid_once(self, model: str, start: int, end: int, is_free: Callable[[int], bool] | None) -> int:
        with self._tx() as c:
            row = c.execute(select(model_uids.c.uid).where(model_uids.c.model == model)).first()
            if row:
                return int(row[0])
            used = {r[0] for r in c.execute(select(model_uids.c.uid).where(
                and_(model_uids.c.uid >= start, model_uids.c.uid <= end)))}
            for uid in range(start, end + 1):
                if uid in used or (is_free is not None and not is_free(uid)):
                    continue
                c.execute(insert(model_uids).values(model=model, uid=uid, allocated=now_ms()))
                return uid
        raise UidRangeExhausted(
            f"no free uid left for model {model!r} in {start}-{end} ({len(used)} already given to served "
            "models, which keep theirs): widen MODELSERVE_MODEL_UID_START/MODELSERVE_MODEL_UID_END")

    # --- tokens --------------------------------------------------------------------------
    def add_token(self, token_id: str, owner: str, comment: str, token_hash: str, created: int,
                  expires: int | None) -> TokenRecord:
        record = TokenRecord(token_id, owner, comment, token_hash, created, expires, None)
        with self._tx() as c:
            c.execute(insert(tokens).values(**record.__dict__))
        return record

    def token(self, token_id: str) -> TokenRecord | None:
        with self._tx() as c:
            r = c.execute(select(tokens).where(tokens.c.token_id == token_id)).first()
        return TokenRecord(**r._mapping) if r else None

    def tokens(self, owner: str | None = None) -> list[TokenRecord]:
        q = select(tokens).order_by(tokens.c.created)
        if owner is not None:
            q = q.where(tokens.c.owner == owner)
        with self._tx() as c:
            return [TokenRecord(**r._mapping) for r in c.execute(q)]

    def revoke_token(self, token_id: str, owner: str | None, when: int) -> bool:
        """False when there is no live token with that id (and that owner, unless None)."""
        where = and_(tokens.c.token_id == token_id, tokens.c.revoked.is_(None))
        if owner is not None:
            where = and_(where, tokens.c.owner == owner)
        with self._tx() as c:
            return c.execute(update(tokens).where(where).values(revoked=when)).rowcount > 0

    # --- serving endpoints ---------------------------------------------------------------
    def create_endpoint(self, endpoint_id: str, name: str, creator: str, config: dict[str, Any],
                        tags: list[dict[str, str]], route_optimized: bool) -> ServingEndpoint | None:
        """The new endpoint, its first config pending and its creator a CAN_MANAGE grantee; None
        when the name is taken (the unique column decides, whichever worker asks first)."""
        at = now_ms()
        try:
            with self._tx() as c:
                c.execute(insert(serving_endpoints).values(
                    id=endpoint_id, name=name, creator=creator, created=at, updated=at, tags=json.dumps(tags),
                    route_optimized=route_optimized, pending_config=json.dumps(config), pending_version=1,
                    pending_start=at, config_update=IN_PROGRESS, last_version=1, update_message=""))
                c.execute(insert(endpoint_grants).values(endpoint_id=endpoint_id, user_name=creator,
                                                         level="CAN_MANAGE"))
        except IntegrityError:
            return None
        return self.endpoint(name)

    def endpoint(self, name: str) -> ServingEndpoint | None:
        with self._tx() as c:
            r = c.execute(select(serving_endpoints).where(serving_endpoints.c.name == name)).first()
        return _row_to_endpoint(r) if r else None

    def endpoint_by_id(self, endpoint_id: str) -> ServingEndpoint | None:
        with self._tx() as c:
            r = c.execute(select(serving_endpoints).where(serving_endpoints.c.id == endpoint_id)).first()
        return _row_to_endpoint(r) if r else None

    def endpoints(self) -> list[ServingEndpoint]:
        with self._tx() as c:
            return [_row_to_endpoint(r) for r in
                    c.execute(select(serving_endpoints).order_by(serving_endpoints.c.name))]

    def begin_config_update(self, name: str, config: dict[str, Any]) -> bool:
        """Makes ``config`` the endpoint's pending config; False while another update is in
        progress (one conditional UPDATE: two workers cannot both start one)."""
        t = serving_endpoints.c
        at = now_ms()
        with self._tx() as c:
            done = c.execute(update(serving_endpoints)
                             .where(and_(t.name == name, t.config_update != IN_PROGRESS))
                             .values(pending_config=json.dumps(config), pending_version=t.last_version + 1,
                                     last_version=t.last_version + 1, pending_start=at,
                                     config_update=IN_PROGRESS, update_message="", updated=at))
            return done.rowcount > 0

    def promote_config(self, name: str, version: int) -> bool:
        """The pending config ``version`` becomes the one serving (if it is still the pending one)."""
        t = serving_endpoints.c
        with self._tx() as c:
            return c.execute(update(serving_endpoints)
                             .where(and_(t.name == name, t.pending_version == version))
                             .values(config=t.pending_config, config_version=version, pending_config=None,
                                     pending_version=None, pending_start=None, config_update=NOT_UPDATING,
                                     failed_config=None, update_message="", updated=now_ms())).rowcount > 0

    def fail_config(self, name: str, version: int, message: str) -> bool:
        """The pending config ``version`` is given up; the config serving (if any) stays."""
        t = serving_endpoints.c
        with self._tx() as c:
            return c.execute(update(serving_endpoints)
                             .where(and_(t.name == name, t.pending_version == version))
                             .values(failed_config=t.pending_config, pending_config=None, pending_version=None,
                                     pending_start=None, config_update=UPDATE_FAILED, update_message=message,
                                     updated=now_ms())).rowcount > 0

    def set_endpoint_tags(self, name: str, tags: list[dict[str, str]]) -> None:
        with self._tx() as c:
            c.execute(update(serving_endpoints).where(serving_endpoints.c.name == name)
                      .values(tags=json.dumps(tags), updated=now_ms()))

    def delete_endpoint(self, name: str) -> bool:
        with self._tx() as c:
            row = c.execute(select(serving_endpoints.c.id).where(serving_endpoints.c.name == name)).first()
            if row is None:
                return False
            c.execute(delete(endpoint_grants).where(endpoint_grants.c.endpoint_id == row[0]))
            c.execute(delete(endpoint_rate_limits).where(endpoint_rate_limits.c.endpoint_id == row[0]))
            c.execute(delete(inference_rows).where(inference_rows.c.endpoint_id == row[0]))
            c.execute(delete(serving_endpoints).where(serving_endpoints.c.id == row[0]))
            return True

    def endpoint_grants(self, endpoint_id: str) -> dict[str, str]:
        with self._tx() as c:
            rows = c.execute(select(endpoint_grants).where(endpoint_grants.c.endpoint_id == endpoint_id))
            return {r.user_name: r.level for r in rows}

    def set_endpoint_grants(self, endpoint_id: str, grants: dict[str, str], replace: bool) -> None:
        """``replace``: these become all the direct grants; else they are merged into them."""
        def once() -> None:
            # Delete-then-insert: two workers granting at once make one lose on the key (on
            # Postgres too, which holds no lock on rows it did not find); it tries again.
            with self._tx() as c:
                where = endpoint_grants.c.endpoint_id == endpoint_id
                if replace:
                    c.execute(delete(endpoint_grants).where(where))
                else:
                    c.execute(delete(endpoint_grants).where(and_(where, endpoint_grants.c.user_name.in_(list(grants)))))
                for user, level in grants.items():
                    c.execute(insert(endpoint_grants).values(endpoint_id=endpoint_id, user_name=user, level=level))

        _retrying(once)

    def rate_limits(self) -> dict[str, list[dict[str, Any]]]:
        """Endpoint id -> its rate limits (endpoints without any are absent)."""
        with self._tx() as c:
            rows = c.execute(select(endpoint_rate_limits)).all()
        return {r.endpoint_id: json.loads(r.limits) for r in rows if json.loads(r.limits)}

    def set_rate_limits(self, endpoint_id: str, limits: list[dict[str, Any]]) -> None:
        def once() -> None:
            with self._tx() as c:
                c.execute(delete(endpoint_rate_limits).where(endpoint_rate_limits.c.endpoint_id == endpoint_id))
                if limits:
                    c.execute(insert(endpoint_rate_limits).values(endpoint_id=endpoint_id, limits=json.dumps(limits)))

        _retrying(once)

    def endpoint_models(self) -> set[str]:
        """Every registered model some endpoint's serving or pending config names."""
        return endpoint_models(self.endpoints())

    def is_served(self, model: str) -> bool:
        """Legacy serving is enabled for the model, or an endpoint needs one of its versions."""
        return self.is_enabled(model) or model in self.endpoint_models()

    # --- inference tables (supervisor/capture/) -------------------------------------------
    def commit_capture(self, rows: list[dict[str, Any]], pending_add: list[tuple[str, str, int, str | None]],
                       pending_drop: list[tuple[str, str]], meta_key: str, meta_value: str) -> int:
        """In one transaction: the rows not stored yet (a request id already there is skipped),
        the spool records still waiting for their line (upstream, id, size, body) added and the
        used or expired ones dropped, and the ingester's position. Returns the rows added. Only the
        ingester (in the reconciler, a singleton) writes here, so reading the ids first is exact."""
        at = now_ms()
        with self._tx() as c:
            ids = [r["request_id"] for r in rows]
            have: set[str] = set()
            for i in range(0, len(ids), 500):
                have |= {x[0] for x in c.execute(select(inference_rows.c.request_id)
                                                  .where(inference_rows.c.request_id.in_(ids[i:i + 500])))}
            fresh = [r for r in rows if r["request_id"] not in have]
            if fresh:
                _insert_many(c, inference_rows, fresh)
            t = capture_pending.c
            for upstream, rid in pending_drop:
                c.execute(delete(capture_pending).where(and_(t.upstream == upstream, t.request_id == rid)))
            for upstream, rid, size, body in pending_add:
                c.execute(delete(capture_pending).where(and_(t.upstream == upstream, t.request_id == rid)))
                c.execute(insert(capture_pending).values(upstream=upstream, request_id=rid, size=size, body=body,
                                                         seen=at))
            c.execute(delete(meta).where(meta.c.key == meta_key))
            c.execute(insert(meta).values(key=meta_key, value=meta_value))
        return len(fresh)

    def capture_pending(self) -> list[tuple[str, str, int, str | None, int]]:
        """(upstream, request id, size, body, seen) of every spool record waiting for its line."""
        with self._tx() as c:
            return [(r.upstream, r.request_id, r.size, r.body, r.seen) for r in c.execute(select(capture_pending))]

    def inference_rows(self, endpoint_id: str, since_ms: int = 0, limit: int | None = None
                       ) -> Iterator[dict[str, Any]]:
        """An endpoint's rows from ``since_ms`` on, oldest first, in pages (an export of millions
        of rows never sits in memory)."""
        t = inference_rows.c
        after: tuple[int, str] = (since_ms, "")
        left = limit
        while left is None or left > 0:
            page = 500 if left is None else min(500, left)
            with self._tx() as c:
                got = c.execute(select(*[getattr(t, n) for n in INFERENCE_COLUMNS])
                                .where(and_(t.endpoint_id == endpoint_id,
                                            (t.timestamp_ms > after[0]) | and_(t.timestamp_ms == after[0],
                                                                               t.request_id > after[1])))
                                .order_by(t.timestamp_ms, t.request_id).limit(page)).all()
            for r in got:
                yield dict(r._mapping)
            if len(got) < page:
                return
            after = (got[-1].timestamp_ms, got[-1].request_id)
            if left is not None:
                left -= len(got)

    def delete_inference_rows(self, before_ms: int) -> int:
        """Retention: rows of requests older than ``before_ms`` go."""
        with self._tx() as c:
            return c.execute(delete(inference_rows).where(inference_rows.c.timestamp_ms < before_ms)).rowcount

    # --- meta ----------------------------------------------------------------------------
    def set_meta(self, key: str, value: str | None) -> None:
        def once() -> None:
            with self._tx() as c:
                c.execute(delete(meta).where(meta.c.key == key))
                if value is not None:
                    c.execute(insert(meta).values(key=key, value=value))

        _retrying(once)

    def scale_to_zero_models(self) -> set[str]:
        """Models whose legacy serving may scale to zero (supervisor/api/scaling.py)."""
        with self._tx() as c:
            rows = c.execute(select(meta.c.key).where(meta.c.key.startswith(SCALE_TO_ZERO_KEY, autoescape=True)))
            return {r[0][len(SCALE_TO_ZERO_KEY):] for r in rows}

    def set_scale_to_zero(self, model: str, enabled: bool) -> None:
        self.set_meta(SCALE_TO_ZERO_KEY + model, "1" if enabled else None)

    def get_meta(self, key: str) -> str | None:
        with self._tx() as c:
            row = c.execute(select(meta.c.value).where(meta.c.key == key)).first()
        return row[0] if row else None


def _retrying(once: Callable[[], T], attempts: int = 20) -> T:
    """``once()`` again, after a short wait, when a unique constraint refused what it wrote
    (another process wrote first; what it wrote is then there to be read)."""
    for attempt in range(attempts):
        try:
            return once()
        except IntegrityError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("not reached")


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
