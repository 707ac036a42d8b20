"""The job catalog: one SQLite file in the state dir, shared by every server process.

The catalog is an *index* of the jobs on the hosts, reconciled from their job
directories; it is never the only copy of anything that matters. Rules:

* WAL + ``busy_timeout``: two servers (Claude Desktop and a terminal) can share it.
* Schema changes are numbered migrations keyed on ``PRAGMA user_version``.
* The intent is written before the side effect: :meth:`Catalog.insert_intent` stores
  the job (phase ``intent``, with its unique token) before anything touches the
  host. An ``idempotency_key`` is UNIQUE, so of two processes submitting the same
  key exactly one row wins and both return it.
* State changes are compare-and-set on the old state, so two processes
  reconciling the same job cannot move it backwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runners.errors import ConfigError, Conflict
from runners.states import ACTIVE, JobState

if TYPE_CHECKING:
    import sqlite3

__all__ = ["MIGRATIONS", "Catalog", "JobRecord"]

MIGRATIONS: list[str] = [
    # 1: the jobs table
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        token TEXT NOT NULL UNIQUE,
        idempotency_key TEXT UNIQUE,
        spec_hash TEXT NOT NULL,
        host TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT,
        state TEXT NOT NULL,
        phase TEXT NOT NULL,
        exit_code INTEGER,
        reason TEXT,
        native_id TEXT,
        job_dir TEXT NOT NULL,
        spec_json TEXT NOT NULL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX jobs_created ON jobs(created_at DESC);
    CREATE INDEX jobs_state ON jobs(state, created_at DESC);
    CREATE INDEX jobs_host_state ON jobs(host, state);
    CREATE INDEX jobs_kind ON jobs(kind, created_at DESC);
    """,
]


@dataclass(frozen=True)
class JobRecord:
    """One catalog row. ``phase``: ``intent`` (nothing on the host yet) or ``launched``."""

    job_id: str
    token: str
    host: str
    kind: str
    state: JobState
    job_dir: str
    spec_json: str
    spec_hash: str
    created_at: float
    updated_at: float
    phase: str = "intent"
    name: str | None = None
    idempotency_key: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    native_id: str | None = None
    cancel_requested: bool = False
    started_at: float | None = None
    ended_at: float | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        d = dict(row)
        d["state"] = JobState(d["state"])
        d["cancel_requested"] = bool(d["cancel_requested"])
        return cls(**d)


_COLUMNS = [f.name for f in fields(JobRecord)]


class Catalog:
    """A thread-safe handle on the catalog file (one connection, serialized by a lock)."""

    def __init__(self, path: str | Path, busy_timeout_ms: int = 15_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        import sqlite3  # here, not at the top: the server lists its tools before any catalog is opened

        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise ConfigError(
                f"The job catalog {self.path} cannot be opened ({e}).",
                "Move the file aside; job directories on the hosts are untouched.",
            ) from e

    # -- schema -------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise ConfigError(
                    f"The job catalog {self.path} has schema {version}, newer than this server ({len(MIGRATIONS)}).",
                    "Upgrade llm-ops-mcp, or point LLM_OPS_MCP_STATE_DIR elsewhere.",
                )
            while version < len(MIGRATIONS):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    # Another process may have migrated while we waited for the lock.
                    version = self._db.execute("PRAGMA user_version").fetchone()[0]
                    if version < len(MIGRATIONS):
                        for stmt in MIGRATIONS[version].split(";"):
                            if stmt.strip():
                                self._db.execute(stmt)
                        self._db.execute(f"PRAGMA user_version={version + 1}")
                        version += 1
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # -- writes -------------------------------------------------------------------------
    def insert_intent(self, rec: JobRecord) -> tuple[JobRecord, bool]:
        import sqlite3  # loaded already by __init__

        """Store a new job before its side effect; ``(existing, False)`` if its idempotency key is taken."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if rec.idempotency_key is not None:
                    row = self._db.execute(
                        "SELECT * FROM jobs WHERE idempotency_key = ?", (rec.idempotency_key,)
                    ).fetchone()
                    if row is not None:
                        self._db.execute("COMMIT")
                        return JobRecord.from_row(row), False
                values = [self._value(getattr(rec, c)) for c in _COLUMNS]
                self._db.execute(
                    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", values
                )
                self._db.execute("COMMIT")
                return rec, True
            except sqlite3.IntegrityError as e:
                self._db.execute("ROLLBACK")
                if rec.idempotency_key is not None:
                    existing = self.get_by_key(rec.idempotency_key)
                    if existing is not None:
                        return existing, False
                raise Conflict(f"Job {rec.job_id} already exists ({e}).", "Submit again.") from e
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def update(self, job_id: str, *, expect_state: JobState | None = None, **changes: Any) -> JobRecord | None:
        """Set columns; with ``expect_state`` only if the row still has it. Returns the new row or None."""
        if not changes:
            return self.get(job_id)
        bad = set(changes) - set(_COLUMNS)
        if bad:
            raise ValueError(f"unknown catalog columns: {bad}")
        changes.setdefault("updated_at", time.time())
        sets = ", ".join(f"{k} = ?" for k in changes)
        args = [self._value(v) for v in changes.values()]
        sql = f"UPDATE jobs SET {sets} WHERE job_id = ?"
        args.append(job_id)
        if expect_state is not None:
            sql += " AND state = ?"
            args.append(expect_state.value)
        with self._lock:
            cur = self._db.execute(sql + " RETURNING *", args)
            row = cur.fetchone()
            cur.fetchall()
        return JobRecord.from_row(row) if row is not None else None

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def insert_many(self, recs: Iterable[JobRecord]) -> int:
        """Bulk insert (benchmarks, imports); one transaction."""
        n = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for rec in recs:
                    self._db.execute(
                        f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                        [self._value(getattr(rec, c)) for c in _COLUMNS],
                    )
                    n += 1
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return n

    # -- reads --------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row) if row is not None else None

    def get_by_key(self, key: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        return JobRecord.from_row(row) if row is not None else None

    def list(
        self,
        *,
        states: Sequence[JobState] | None = None,
        kind: str | None = None,
        host: str | None = None,
        limit: int = 50,
    ) -> list[JobRecord]:
        """Newest first."""
        where, args = [], []
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args += [s.value for s in states]
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if host:
            where.append("host = ?")
            args.append(host)
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(int(limit))
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def active(self, host: str | None = None) -> list[JobRecord]:
        """Every job not yet in a terminal state (what start-up reconciliation looks at)."""
        return self.list(states=sorted(ACTIVE), host=host, limit=1_000_000)

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _value(v: Any) -> Any:
        if isinstance(v, JobState):
            return v.value
        if isinstance(v, bool):
            return int(v)
        return v


def with_state(rec: JobRecord, **changes: Any) -> JobRecord:
    """A copy of ``rec`` with changes (helper for pure code and tests)."""
    return replace(rec, **changes)
