"""The durable store of deferred transcription jobs (SPEC §4 "ASR busy or down -> record only,
transcribe later"): one row per (tenant, flowId), durable across restarts. The tenant is the owner's
token `sub` ("" when authentication is off): two tenants' flows never meet.

`TranscriptStore` is the interface the runner and the gateway use; two stores implement it:
- the embedded default, one sqlite file (WAL) per gateway: `JobStore` is blocking, `AsyncJobStore`
  runs every call of it on one dedicated thread;
- a PostgreSQL database that several gateways share (`JOBS_STORE_URL`, `pgstore.PostgresJobStore`):
  a running job carries its gateway's lease, and a job whose lease ran out (its gateway died) is
  taken over by another gateway (docs/transcripts.md#several-gateways).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from common.envconf import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")
STATUSES = ("pending", "running", "done", "failed")
MAX_ERROR_CHARS = 500


class PermanentJobError(Exception):
    """Raised by a `transcribe` coroutine when retrying cannot help (unreadable recording, refused
    input): the job is marked failed at once."""


class CapacityUnavailable(Exception):
    """Raised by a `transcribe` coroutine when the service it needs is busy or down (ASR `busy`,
    `RESOURCE_EXHAUSTED`, `UNAVAILABLE`, no member of any pool serving the language, the archive not
    answering): nothing is wrong with the job, so it waits with backoff and the attempt is not
    counted against `JOBS_MAX_ATTEMPTS`, which is kept for failures of the job itself."""


@dataclass(frozen=True)
class JobsConfig:
    """The job store and runner. Backoff before attempt n+1: min(cap, base * factor**(n-1)), less up
    to `backoff_jitter` of itself (seeded, so a test can predict it)."""

    db_path: str = "var/jobs.sqlite"
    concurrency: int = 1
    max_attempts: int = 5
    backoff_base_s: float = 10.0
    backoff_factor: float = 3.0
    backoff_cap_s: float = 900.0
    backoff_jitter: float = 0.1
    jitter_seed: int | None = None
    capacity_poll_s: float = 5.0
    attempt_timeout_s: float = 900.0
    # Waits for capacity (busy, unavailable) back off from `capacity_poll_s`, doubling up to this.
    wait_cap_s: float = 60.0
    # A shared store (PostgreSQL) instead of `db_path`: "postgresql://user:password@host:port/db".
    store_url: str = ""
    # How long a running job stays this gateway's without a renewal (renewed every third of it); a
    # job whose lease ran out is taken over. Only with a shared store.
    lease_s: float = 60.0
    # With a shared store, the runner looks for due jobs at least this often: other gateways queue
    # jobs and leases run out without waking it.
    poll_s: float = 5.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_attempts < 1:
            raise ConfigError("JOBS_CONCURRENCY and JOBS_MAX_ATTEMPTS must be >= 1")
        if self.backoff_base_s < 0 or self.backoff_factor < 1 or self.backoff_cap_s < self.backoff_base_s:
            raise ConfigError("backoff needs base >= 0, factor >= 1, cap >= base")
        if not 0 <= self.backoff_jitter < 1:
            raise ConfigError("JOBS_BACKOFF_JITTER must be in [0, 1)")
        if self.capacity_poll_s <= 0 or self.attempt_timeout_s <= 0:
            raise ConfigError("JOBS_CAPACITY_POLL_SEC and JOBS_ATTEMPT_TIMEOUT_SEC must be > 0")
        if self.wait_cap_s < self.capacity_poll_s:
            raise ConfigError("JOBS_WAIT_CAP_SEC must be >= JOBS_CAPACITY_POLL_SEC")
        if self.store_url and not self.store_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("JOBS_STORE_URL must be a postgresql:// URL (or empty for the sqlite file JOBS_DB)")
        if self.lease_s <= 0 or self.poll_s <= 0:
            raise ConfigError("JOBS_LEASE_SEC and JOBS_POLL_SEC must be > 0")


class Backoff:
    """Delay before the next attempt, after `attempts` failed ones (pure apart from the seeded rng)."""

    def __init__(self, config: JobsConfig) -> None:
        self._cfg = config
        self._rng = random.Random(config.jitter_seed)

    def delay_s(self, attempts: int) -> float:
        c = self._cfg
        delay = min(c.backoff_cap_s, c.backoff_base_s * c.backoff_factor ** max(0, attempts - 1))
        return delay * (1.0 - c.backoff_jitter * self._rng.random())

    def wait_s(self, waits: int) -> float:
        """Delay before trying again after the `waits`-th time the capacity was missing:
        `capacity_poll_s` doubling up to `wait_cap_s`, jittered like `delay_s`."""
        c = self._cfg
        delay = min(c.wait_cap_s, c.capacity_poll_s * 2.0 ** max(0, min(waits - 1, 32)))
        return delay * (1.0 - c.backoff_jitter * self._rng.random())


@dataclass(frozen=True)
class Record:
    """A session's recording that the archive did not take live: spooled by the gateway (`pending`)
    until an archive member stored it (`stored`, with its URL)."""

    flow_id: str
    tenant: str
    status: str
    record_url: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Job:
    flow_id: str
    record_url: str
    lang: str
    domain: str
    status: str
    attempts: int
    next_attempt_at: float  # wall-clock epoch seconds (jobs outlive the process)
    last_error: str
    result: dict[str, Any] | None
    created_at: float
    updated_at: float
    tenant: str = ""
    waits: int = 0  # times it found no capacity (busy, unavailable); not counted in `attempts`

    @property
    def finals(self) -> list[dict[str, Any]]:
        return list((self.result or {}).get("finals", []))

    @property
    def srt(self) -> str:
        return str((self.result or {}).get("srt", ""))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  flow_id TEXT NOT NULL,
  record_url TEXT NOT NULL,
  lang TEXT NOT NULL DEFAULT '',
  domain TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at REAL NOT NULL,
  last_error TEXT NOT NULL DEFAULT '',
  result TEXT,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  tenant TEXT NOT NULL DEFAULT '',
  waits INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant, flow_id)
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS records (
  flow_id TEXT NOT NULL,
  tenant TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL CHECK (status IN ('pending', 'stored')),
  record_url TEXT NOT NULL DEFAULT '',
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  PRIMARY KEY (tenant, flow_id)
);
"""
_OLD_COLUMNS = (
    "flow_id, record_url, lang, domain, status, attempts, next_attempt_at, last_error, result, created_at, updated_at"
)
_COLUMNS = f"{_OLD_COLUMNS}, tenant, waits"
# A store written before tenants (flow_id alone as the key) is rebuilt in place, its jobs kept as tenant "".
_MIGRATE = f"""
ALTER TABLE jobs RENAME TO jobs_untenanted;
{_SCHEMA}
INSERT INTO jobs ({_OLD_COLUMNS}, tenant) SELECT {_OLD_COLUMNS}, '' FROM jobs_untenanted;
DROP TABLE jobs_untenanted;
"""
# A store written before waits were counted gets the column, at 0.
_ADD_WAITS = "ALTER TABLE jobs ADD COLUMN waits INTEGER NOT NULL DEFAULT 0"


def _row_to_job(row: tuple[Any, ...]) -> Job:
    fields = list(row)
    fields[8] = json.loads(fields[8]) if fields[8] else None
    return Job(*fields)


class JobStore:
    """The durable job table. Blocking calls; every write is one autocommitted statement. Opening it
    puts jobs a crash left `running` back to `pending` (their started attempt still counts, so a job
    that crashes the process cannot loop forever). One store file per gateway process."""

    def __init__(self, path: str | Path, now: float | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: the async facade opens it on one thread and uses it on another;
        # the lock (and the facade's single thread) serialise all use.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a queued job survives power loss too
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if columns and "tenant" not in columns:
                self._db.executescript(f"BEGIN; {_MIGRATE} COMMIT;")
            elif columns and "waits" not in columns:
                self._db.execute(_ADD_WAITS)
            self._db.executescript(_SCHEMA)
        self.recovered = self._recover(time.time() if now is None else now)

    def _recover(self, now: float) -> int:
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status='pending', next_attempt_at=?, updated_at=?, "
                "last_error=CASE WHEN last_error='' THEN 'interrupted by a restart' ELSE last_error END "
                "WHERE status='running'",
                (now, now),
            )
        if cur.rowcount:
            log.warning(
                "jobs left running by a crash are pending again: %d",
                cur.rowcount,
                extra={"stage": "jobs", "event": "recovered"},
            )
        return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, args: tuple[Any, ...]) -> Job | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return _row_to_job(row) if row else None

    def get(self, flow_id: str, tenant: str = "") -> Job | None:
        return self._one(f"SELECT {_COLUMNS} FROM jobs WHERE tenant=? AND flow_id=?", (tenant, flow_id))

    def enqueue(
        self, flow_id: str, record_url: str, lang: str, domain: str, now: float, tenant: str = ""
    ) -> tuple[Job, bool]:
        """Queue a job, idempotent by (tenant, flowId): an existing job (whatever its state) is returned
        as is. Returns (job, created). Without `record_url` (the recording waits in the gateway's
        archive spool) the job takes the URL once the record is stored (`record_stored`)."""
        if not record_url:
            record = self.get_record(flow_id, tenant)
            record_url = record.record_url if record is not None else ""
        with self._lock:
            cur = self._db.execute(
                f"INSERT INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, 'pending', 0, ?, '', NULL, ?, ?, ?, 0) "
                "ON CONFLICT(tenant, flow_id) DO NOTHING",
                (flow_id, record_url, lang, domain, now, now, now, tenant),
            )
        job = self.get(flow_id, tenant)
        assert job is not None
        return job, cur.rowcount == 1

    def due(self, now: float, limit: int) -> list[Job]:
        """Pending jobs whose time has come, the longest-due first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE status='pending' AND next_attempt_at<=? "
                "ORDER BY next_attempt_at, created_at, flow_id LIMIT ?",
                (now, limit),
            ).fetchall()
        return [_row_to_job(r) for r in rows]

    def backlog(self) -> tuple[int, float | None]:
        """Jobs not finished yet (pending or running) and the creation time of the oldest of them."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM jobs WHERE status IN ('pending', 'running')"
            ).fetchone()
        return int(row[0]), None if row[1] is None else float(row[1])

    def next_due_at(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_attempt_at) FROM jobs WHERE status='pending'").fetchone()
        return None if row[0] is None else float(row[0])

    def _update(self, sql: str, args: tuple[Any, ...], flow_id: str, tenant: str) -> Job | None:
        """Run `sql ... WHERE tenant=? AND flow_id=? AND <its status condition>`."""
        with self._lock:
            cur = self._db.execute(sql, (*args, tenant, flow_id))
        return self.get(flow_id, tenant) if cur.rowcount == 1 else None

    def claim(self, flow_id: str, now: float, tenant: str = "") -> Job | None:
        """pending -> running, counting one attempt; None if it was not pending."""
        return self._update(
            "UPDATE jobs SET status='running', attempts=attempts+1, updated_at=? "
            "WHERE tenant=? AND flow_id=? AND status='pending'",
            (now,),
            flow_id,
            tenant,
        )

    def complete(self, flow_id: str, result: dict[str, Any], now: float, tenant: str = "") -> Job | None:
        return self._update(
            "UPDATE jobs SET status='done', result=?, last_error='', updated_at=? "
            "WHERE tenant=? AND flow_id=? AND status='running'",
            (json.dumps(result, ensure_ascii=False), now),
            flow_id,
            tenant,
        )

    def retry(self, flow_id: str, error: str, next_attempt_at: float, now: float, tenant: str = "") -> Job | None:
        return self._update(
            "UPDATE jobs SET status='pending', last_error=?, next_attempt_at=?, updated_at=? "
            "WHERE tenant=? AND flow_id=? AND status='running'",
            (error[:MAX_ERROR_CHARS], next_attempt_at, now),
            flow_id,
            tenant,
        )

    def wait(self, flow_id: str, error: str, next_attempt_at: float, now: float, tenant: str = "") -> Job | None:
        """running -> pending for want of capacity: the attempt is given back, `waits` counts it."""
        return self._update(
            "UPDATE jobs SET status='pending', attempts=MAX(attempts-1, 0), waits=waits+1, last_error=?, "
            "next_attempt_at=?, updated_at=? WHERE tenant=? AND flow_id=? AND status='running'",
            (error[:MAX_ERROR_CHARS], next_attempt_at, now),
            flow_id,
            tenant,
        )

    def fail(self, flow_id: str, error: str, now: float, tenant: str = "") -> Job | None:
        return self._update(
            "UPDATE jobs SET status='failed', last_error=?, updated_at=? "
            "WHERE tenant=? AND flow_id=? AND status IN ('pending', 'running')",
            (error[:MAX_ERROR_CHARS], now),
            flow_id,
            tenant,
        )

    def release_running(self, now: float) -> int:
        """running -> pending without counting the attempt (a graceful shutdown interrupted them)."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status='pending', attempts=MAX(attempts-1, 0), next_attempt_at=?, "
                "updated_at=? WHERE status='running'",
                (now, now),
            )
        return cur.rowcount

    def record_pending(self, flow_id: str, now: float, tenant: str = "") -> None:
        """The archive did not take the session live; its audio waits in the gateway's spool."""
        with self._lock:
            self._db.execute(
                "INSERT INTO records (flow_id, tenant, status, record_url, created_at, updated_at) "
                "VALUES (?, ?, 'pending', '', ?, ?) ON CONFLICT(tenant, flow_id) DO UPDATE SET "
                "status='pending', record_url='', updated_at=excluded.updated_at",
                (flow_id, tenant, now, now),
            )

    def record_stored(self, flow_id: str, url: str, now: float, tenant: str = "") -> None:
        """The spooled session is in the archive under `url`; a deferred job waiting for it gets it."""
        with self._lock:
            self._db.execute(
                "INSERT INTO records (flow_id, tenant, status, record_url, created_at, updated_at) "
                "VALUES (?, ?, 'stored', ?, ?, ?) ON CONFLICT(tenant, flow_id) DO UPDATE SET "
                "status='stored', record_url=excluded.record_url, updated_at=excluded.updated_at",
                (flow_id, tenant, url, now, now),
            )
            self._db.execute(  # due at once: it was only waiting for this URL
                "UPDATE jobs SET record_url=?, next_attempt_at=MIN(next_attempt_at, ?), updated_at=? "
                "WHERE tenant=? AND flow_id=? AND record_url=''",
                (url, now, now, tenant, flow_id),
            )

    def get_record(self, flow_id: str, tenant: str = "") -> Record | None:
        with self._lock:
            row = self._db.execute(
                "SELECT flow_id, tenant, status, record_url, created_at, updated_at FROM records "
                "WHERE tenant=? AND flow_id=?",
                (tenant, flow_id),
            ).fetchone()
        return Record(*row) if row else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        found = dict(rows)
        return {s: int(found.get(s, 0)) for s in STATUSES}


JobKey = tuple[str, str]  # (tenant, flowId)


class TranscriptStore(Protocol):
    """The job and record store as the runner and the gateway use it (every call async). `now_fn` is
    the store's clock (wall-clock epoch seconds: jobs outlive processes). `shared` says whether other
    gateways use the same store: then `running` rows may be theirs, and the runner polls."""

    now_fn: Callable[[], float]
    shared: bool

    async def close(self) -> None: ...
    async def get(self, flow_id: str, tenant: str = "") -> Job | None: ...
    async def enqueue(
        self, flow_id: str, record_url: str, lang: str = "", domain: str = "", tenant: str = ""
    ) -> tuple[Job, bool]: ...
    async def due(self, limit: int, now: float | None = None) -> list[Job]: ...
    async def next_due_at(self) -> float | None: ...
    async def backlog(self) -> tuple[int, float | None]: ...
    async def claim(self, flow_id: str, tenant: str = "") -> Job | None: ...
    async def renew(self, keys: list[JobKey]) -> set[JobKey]: ...
    async def complete(self, flow_id: str, result: dict[str, Any], tenant: str = "") -> Job | None: ...
    async def retry(self, flow_id: str, error: str, next_attempt_at: float, tenant: str = "") -> Job | None: ...
    async def wait(self, flow_id: str, error: str, next_attempt_at: float, tenant: str = "") -> Job | None: ...
    async def fail(self, flow_id: str, error: str, tenant: str = "") -> Job | None: ...
    async def release_running(self) -> int: ...
    async def record_pending(self, flow_id: str, tenant: str = "") -> None: ...
    async def record_stored(self, flow_id: str, url: str, tenant: str = "") -> None: ...
    async def get_record(self, flow_id: str, tenant: str = "") -> Record | None: ...
    async def counts(self) -> dict[str, int]: ...


async def open_store(config: JobsConfig, now_fn: Callable[[], float] = time.time) -> TranscriptStore:
    """The shared PostgreSQL store when `JOBS_STORE_URL` is set, else the sqlite file `JOBS_DB`."""
    if config.store_url:
        from orchestrator.transcripts.pgstore import PostgresJobStore  # psycopg only when configured

        return await PostgresJobStore.open(config.store_url, lease_s=config.lease_s, now_fn=now_fn)
    Path(config.db_path).parent.mkdir(parents=True, exist_ok=True)
    return await AsyncJobStore.open(config.db_path, now_fn)


class AsyncJobStore:
    """`JobStore` for the event loop: every call runs on one dedicated thread (sqlite work, and an
    fsync per write, never block the loop). Time comes from `now_fn` (wall clock by default). The
    file is this gateway's alone (`shared` is false): every `running` row is its own."""

    shared = False

    def __init__(self, store: JobStore, executor: ThreadPoolExecutor, now_fn: Callable[[], float] = time.time) -> None:
        self.store, self._executor, self.now_fn = store, executor, now_fn

    @classmethod
    async def open(cls, path: str | Path, now_fn: Callable[[], float] = time.time) -> AsyncJobStore:
        executor = ThreadPoolExecutor(1, thread_name_prefix="jobs-db")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(executor, JobStore, path, now_fn())
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor, now_fn)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def close(self) -> None:
        await self._run(self.store.close)
        self._executor.shutdown(wait=True)

    async def get(self, flow_id: str, tenant: str = "") -> Job | None:
        return await self._run(self.store.get, flow_id, tenant)

    async def enqueue(
        self, flow_id: str, record_url: str, lang: str = "", domain: str = "", tenant: str = ""
    ) -> tuple[Job, bool]:
        return await self._run(self.store.enqueue, flow_id, record_url, lang, domain, self.now_fn(), tenant)

    async def due(self, limit: int, now: float | None = None) -> list[Job]:
        return await self._run(self.store.due, self.now_fn() if now is None else now, limit)

    async def next_due_at(self) -> float | None:
        return await self._run(self.store.next_due_at)

    async def backlog(self) -> tuple[int, float | None]:
        return await self._run(self.store.backlog)

    async def claim(self, flow_id: str, tenant: str = "") -> Job | None:
        return await self._run(self.store.claim, flow_id, self.now_fn(), tenant)

    async def renew(self, keys: list[JobKey]) -> set[JobKey]:
        """No leases in a file of one gateway: nothing is ever lost."""
        return set()

    async def complete(self, flow_id: str, result: dict[str, Any], tenant: str = "") -> Job | None:
        return await self._run(self.store.complete, flow_id, result, self.now_fn(), tenant)

    async def retry(self, flow_id: str, error: str, next_attempt_at: float, tenant: str = "") -> Job | None:
        return await self._run(self.store.retry, flow_id, error, next_attempt_at, self.now_fn(), tenant)

    async def wait(self, flow_id: str, error: str, next_attempt_at: float, tenant: str = "") -> Job | None:
        return await self._run(self.store.wait, flow_id, error, next_attempt_at, self.now_fn(), tenant)

    async def fail(self, flow_id: str, error: str, tenant: str = "") -> Job | None:
        return await self._run(self.store.fail, flow_id, error, self.now_fn(), tenant)

    async def release_running(self) -> int:
        return await self._run(self.store.release_running, self.now_fn())

    async def record_pending(self, flow_id: str, tenant: str = "") -> None:
        await self._run(self.store.record_pending, flow_id, self.now_fn(), tenant)

    async def record_stored(self, flow_id: str, url: str, tenant: str = "") -> None:
        await self._run(self.store.record_stored, flow_id, url, self.now_fn(), tenant)

    async def get_record(self, flow_id: str, tenant: str = "") -> Record | None:
        return await self._run(self.store.get_record, flow_id, tenant)

    async def counts(self) -> dict[str, int]:
        return await self._run(self.store.counts)
