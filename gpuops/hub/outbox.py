"""The hub's durable outbox: each accepted request, on disk before its 202, until one hub dispatches it.

Two backends, one schema and one set of statements:
- SQLite (one machine, the default): WAL with synchronous=FULL, so the commit that ends accept() is
  fsynced; writes take the write lock up front (BEGIN IMMEDIATE), so claims never interleave.
- PostgreSQL (several hub replicas, GPUOPS_HUB_DB=postgresql://...): a claim locks its rows with
  SELECT ... FOR UPDATE SKIP LOCKED and leases them in the same statement, so two replicas never
  take one task.

A claim is a lease (owner + lease_until). A crashed owner's lease runs out and another owner takes the
task; dispatched/retry_later/dead_letter change a task only while the caller is still its owner.
Times are epoch seconds from the database's clock, so replicas on different hosts agree on expiry.
A task's parameters may hold a user's request: they are never logged, and kept out of Task's repr and
of every error raised here (drivers' messages can quote values, so errors carry only their class).
"""
from __future__ import annotations

import contextlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

STATES = ("queued", "dispatched", "dead-lettered")
KINDS = ("task", "github-push", "pubsub")

_COLUMNS = ("id", "idempotency_key", "kind", "route", "destination", "deployment", "parameters", "state",
            "flow_run_id", "attempts", "last_error", "answer", "created_at", "updated_at", "next_attempt_at")
_COLS = ", ".join(_COLUMNS)
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS hub_tasks (
        id TEXT PRIMARY KEY, idempotency_key TEXT, kind TEXT NOT NULL, route TEXT, destination TEXT,
        deployment TEXT NOT NULL, parameters TEXT NOT NULL, state TEXT NOT NULL, flow_run_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, answer TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        next_attempt_at DOUBLE PRECISION, owner TEXT, lease_until DOUBLE PRECISION)""",
    # Keys are unique per kind: a client's Idempotency-Key can never collide with a Pub/Sub message id.
    "CREATE UNIQUE INDEX IF NOT EXISTS hub_tasks_key ON hub_tasks (kind, idempotency_key)",
    "CREATE INDEX IF NOT EXISTS hub_tasks_due ON hub_tasks (state, next_attempt_at)",
)
# {now}: the database's clock; {lock}: the row lock PostgreSQL takes (SQLite's write lock covers it).
_CLAIM = f"""WITH picked AS MATERIALIZED (
        SELECT id AS pick_id FROM hub_tasks
        WHERE state = 'queued' AND next_attempt_at <= {{now}} AND (lease_until IS NULL OR lease_until <= {{now}})
        ORDER BY next_attempt_at, created_at LIMIT ? {{lock}})
    UPDATE hub_tasks SET owner = ?, lease_until = {{now}} + ?, attempts = attempts + 1, updated_at = {{now}}
    FROM picked WHERE id = pick_id RETURNING {_COLS}"""
# Only the lease holder may finish a task; a retry goes back to the queue, due after its delay.
_FINISH = """UPDATE hub_tasks SET state = ?, flow_run_id = ?, last_error = ?,
        next_attempt_at = CASE WHEN ? = 'queued' THEN {now} + ? ELSE NULL END,
        owner = NULL, lease_until = NULL, updated_at = {now}
    WHERE id = ? AND owner = ? AND state = 'queued' RETURNING id"""
_ERROR_CHARS = 2000


class OutboxError(RuntimeError):
    """The outbox's database failed; the message names the operation and the error class, never values."""


@dataclass
class NewTask:
    """A request to accept. `id` is chosen up front so the caller can put it in `answer` (the 202 body)."""
    kind: str                          # "task" | "github-push" | "pubsub"
    deployment: str                    # "flow/deployment"
    parameters: dict = field(repr=False)
    idempotency_key: str | None = None  # None: every accept is a new task
    route: str | None = None           # "gpu" | "cpu"
    destination: str | None = None     # "cloud-run" | "gke"
    answer: dict = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class Task:
    id: str
    idempotency_key: str | None
    kind: str
    route: str | None
    destination: str | None
    deployment: str
    parameters: dict = field(repr=False)
    state: str = "queued"              # "queued" | "dispatched" | "dead-lettered"
    flow_run_id: str | None = None
    attempts: int = 0                  # how many times it was claimed (a crashed attempt counts too)
    last_error: str | None = None
    answer: dict = field(default_factory=dict)
    created_at: float = 0.0            # epoch seconds, the database's clock
    updated_at: float = 0.0
    next_attempt_at: float | None = None  # None once dispatched or dead-lettered

    @classmethod
    def _from_row(cls, row) -> Task:
        values = dict(zip(_COLUMNS, row))
        values["parameters"], values["answer"] = json.loads(values["parameters"]), json.loads(values["answer"])
        return cls(**values)


def open_outbox(url: str | None = None) -> Outbox:
    """None/"" -> <GPUOPS_STATE_DIR>/hub/outbox.sqlite3; "sqlite:///rel/path" or "sqlite:////abs/path";
    "postgresql://user:pass@host:port/db" ("postgres://" and SQLAlchemy's "postgresql+driver://" too)."""
    from gpuops.state import state_dir

    if not url:
        return Outbox(_SQLite(state_dir() / "hub" / "outbox.sqlite3"))
    scheme, _, rest = url.partition("://")
    base = scheme.split("+", 1)[0].lower()
    if base == "sqlite" and rest.startswith("/") and len(rest) > 1:
        return Outbox(_SQLite(Path(rest[1:])))
    if base in ("postgresql", "postgres") and rest:
        return Outbox(_Postgres(f"postgresql://{rest}"))
    # Never echo the URL: it may hold a password.
    raise ValueError(f"outbox URL: scheme {scheme!r} is not sqlite:///<path> or postgresql://...")


class Outbox:
    def __init__(self, backend: _SQLite | _Postgres):
        self._db = backend
        self._db.run("create the schema", (*backend.schema_prelude, *_SCHEMA), ())

    def accept(self, new: NewTask) -> tuple[Task, bool]:
        """Durable on return. A key already accepted for this kind -> (that task, False); else (task, True)."""
        for name, value, allowed in (("kind", new.kind, KINDS), ("route", new.route, ("gpu", "cpu", None)),
                                     ("destination", new.destination, ("cloud-run", "gke", None))):
            if value not in allowed:
                raise ValueError(f"{name}: {value!r} is not one of {allowed}")
        row = (new.id, new.idempotency_key, new.kind, new.route, new.destination, new.deployment,
               json.dumps(new.parameters), "queued", None, 0, None, json.dumps(new.answer))
        now = self._db.now
        rows = self._db.run("accept", f"""INSERT INTO hub_tasks ({_COLS})
            VALUES ({", ".join("?" * len(row))}, {now}, {now}, {now})
            ON CONFLICT DO NOTHING RETURNING {_COLS}""", row)
        if rows:
            return Task._from_row(rows[0]), True
        # Lost to an earlier accept of the same key (a concurrent one has committed by now: both backends
        # make the loser's INSERT wait for the winner).
        where, args = (("kind = ? AND idempotency_key = ?", (new.kind, new.idempotency_key))
                       if new.idempotency_key is not None else ("id = ?", (new.id,)))
        rows = self._db.run("accept", f"SELECT {_COLS} FROM hub_tasks WHERE {where}", args, write=False)
        return Task._from_row(rows[0]), False

    def get(self, task_id: str) -> Task | None:
        rows = self._db.run("get", f"SELECT {_COLS} FROM hub_tasks WHERE id = ?", (task_id,), write=False)
        return Task._from_row(rows[0]) if rows else None

    def claim(self, owner: str, limit: int, lease_s: float) -> list[Task]:
        """Up to `limit` queued tasks that are due and unleased (or whose lease ran out), leased to `owner`
        for `lease_s` seconds, oldest first. No task is leased to two owners at once."""
        sql = _CLAIM.format(now=self._db.now, lock=self._db.lock_rows)
        rows = self._db.run("claim", sql, (int(limit), owner, float(lease_s)))
        return sorted((Task._from_row(r) for r in rows), key=lambda t: (t.next_attempt_at, t.created_at))

    def dispatched(self, task_id: str, owner: str, flow_run_id: str) -> bool:
        return self._finish("dispatched", "dispatched", task_id, owner, flow_run_id=str(flow_run_id))

    def retry_later(self, task_id: str, owner: str, error: str, delay_s: float) -> bool:
        return self._finish("retry_later", "queued", task_id, owner, error=error, delay_s=delay_s)

    def dead_letter(self, task_id: str, owner: str, error: str) -> bool:
        return self._finish("dead_letter", "dead-lettered", task_id, owner, error=error)

    def _finish(self, what, state, task_id, owner, flow_run_id=None, error=None, delay_s=0.0) -> bool:
        """True if `owner` still held the lease and the task changed; False (nothing changed) otherwise."""
        error = None if error is None else str(error)[:_ERROR_CHARS]
        rows = self._db.run(what, _FINISH.format(now=self._db.now),
                            (state, flow_run_id, error, state, float(delay_s), task_id, owner))
        return bool(rows)

    def counts(self) -> dict[str, int]:
        rows = self._db.run("counts", "SELECT state, COUNT(*) FROM hub_tasks GROUP BY state", (), write=False)
        return {state: 0 for state in STATES} | {state: int(n) for state, n in rows}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _SQLite:
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    lock_rows = ""
    schema_prelude = ()

    def __init__(self, path: Path):
        import sqlite3

        self._errors = sqlite3.Error
        self._lock = threading.Lock()  # one connection, shared by the hub's threads one at a time
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the only transactions are the explicit BEGIN IMMEDIATE ... COMMIT below.
        self._conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.run("open", ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL"), (), write=False)

    def run(self, what: str, sql: str | tuple, args: tuple, *, write: bool = True) -> list[tuple]:
        with self._lock:
            try:
                if write:
                    self._conn.execute("BEGIN IMMEDIATE")  # the write lock first: no stale read to upgrade
                rows = [row for stmt in _statements(sql) for row in self._conn.execute(stmt, args)]
                if write:
                    self._conn.execute("COMMIT")  # synchronous=FULL: fsynced before this returns
                return rows
            except self._errors as error:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                # sqlite3's messages never quote bound values ("database is locked", "disk I/O error").
                raise OutboxError(f"outbox {what} failed: {type(error).__name__}: {error}") from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Postgres:
    now = "extract(epoch from statement_timestamp())::float8"
    lock_rows = "FOR UPDATE SKIP LOCKED"  # rows another replica is claiming are passed over, not waited on
    schema_prelude = ("SELECT pg_advisory_xact_lock(7041960)",)  # replicas creating the schema at once

    def __init__(self, conninfo: str):
        import psycopg

        self._psycopg, self._conninfo, self._conn = psycopg, conninfo, None
        self._lock = threading.Lock()  # one connection, shared by the hub's threads one at a time

    def run(self, what: str, sql: str | tuple, args: tuple, *, write: bool = True) -> list[tuple]:
        with self._lock:
            if self._conn is None or self._conn.closed:
                try:  # autocommit: each statement commits (and is fsynced) before execute() returns
                    self._conn = self._psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10)
                except self._psycopg.Error as error:
                    # Connection errors name host, port and user, never the password or a statement.
                    raise OutboxError(f"outbox connect failed: {type(error).__name__}: {error}") from None
            statements = _statements(sql)
            try:  # one statement is a transaction of its own (autocommit); several share one
                with self._conn.transaction() if len(statements) > 1 else contextlib.nullcontext():
                    rows = []
                    for stmt in statements:
                        cursor = self._conn.execute(stmt.replace("?", "%s"), args)
                        rows += cursor.fetchall() if cursor.description else []
                    return rows
            except self._psycopg.Error as error:
                if self._conn.broken:
                    self._conn.close()  # the next run() reconnects
                # Server messages can quote values (a bad literal, a key): keep only the class and SQLSTATE.
                sqlstate = getattr(getattr(error, "diag", None), "sqlstate", None)
                raise OutboxError(f"outbox {what} failed: {type(error).__name__} (SQLSTATE {sqlstate})") from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def _statements(sql: str | tuple) -> tuple:
    return (sql,) if isinstance(sql, str) else sql
