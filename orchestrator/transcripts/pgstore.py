"""The job store that several gateways share: PostgreSQL (`JOBS_STORE_URL`), through psycopg 3's
async connection pool. Same rows and answers as the sqlite store (`store.JobStore`), plus a lease:

- `claim` takes a pending job, or a running one whose lease ran out (its gateway died), with
  `SELECT ... FOR UPDATE SKIP LOCKED`: two gateways never run one job, and neither waits on the other;
  the job is then this gateway's (`owner`) until `lease_until`, which the runner renews (`renew`).
- `complete`, `retry` and `wait` change a job only while this gateway owns it: a gateway that lost
  its lease (paused longer than the lease) cannot overwrite what the gateway that took over wrote.
- `release_running` (a graceful stop) gives back this gateway's running jobs, never another's.

Every write is one statement (or one transaction), autocommitted. Times are the callers' wall-clock
epoch seconds, as in the sqlite store: the gateways' clocks must agree to well under the lease (NTP).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from orchestrator.transcripts.store import MAX_ERROR_CHARS, STATUSES, Job, JobKey, Record

log = logging.getLogger(__name__)
_SCHEMA_LOCK = 0x5EEC_4A0B  # advisory lock: two gateways starting at once create the tables once
_SCHEMA = """
CREATE TABLE IF NOT EXISTS speechgw_jobs (
  tenant TEXT NOT NULL DEFAULT '',
  flow_id TEXT NOT NULL,
  record_url TEXT NOT NULL,
  lang TEXT NOT NULL DEFAULT '',
  domain TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at DOUBLE PRECISION NOT NULL,
  last_error TEXT NOT NULL DEFAULT '',
  result TEXT,
  created_at DOUBLE PRECISION NOT NULL,
  updated_at DOUBLE PRECISION NOT NULL,
  waits INTEGER NOT NULL DEFAULT 0,
  owner TEXT NOT NULL DEFAULT '',
  lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant, flow_id)
);
CREATE INDEX IF NOT EXISTS speechgw_jobs_due ON speechgw_jobs (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS speechgw_jobs_lease ON speechgw_jobs (lease_until) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS speechgw_records (
  tenant TEXT NOT NULL DEFAULT '',
  flow_id TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('pending', 'stored')),
  record_url TEXT NOT NULL DEFAULT '',
  created_at DOUBLE PRECISION NOT NULL,
  updated_at DOUBLE PRECISION NOT NULL,
  PRIMARY KEY (tenant, flow_id)
);
"""
_COLUMNS = (
    "flow_id, record_url, lang, domain, status, attempts, next_attempt_at, last_error, result, "
    "created_at, updated_at, tenant, waits"
)
_KEY = "tenant=%(tenant)s AND flow_id=%(flow_id)s"
_MINE = "status='running' AND owner=%(owner)s"


def _job(row: TupleRow | None) -> Job | None:
    if row is None:
        return None
    fields = list(row)
    fields[8] = json.loads(fields[8]) if fields[8] else None
    return Job(*fields)


def instance_id() -> str:
    """This process among the gateways: host, pid and a random part (a restarted pod is a new owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class PostgresJobStore:
    """`store.TranscriptStore` on PostgreSQL, shared by every gateway that has the same URL."""

    shared = True

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]],
        lease_s: float,
        owner: str,
        now_fn: Callable[[], float] = time.time,
    ) -> None:
        self._pool, self.lease_s, self.owner, self.now_fn = pool, lease_s, owner, now_fn

    @classmethod
    async def open(
        cls,
        url: str,
        lease_s: float = 60.0,
        now_fn: Callable[[], float] = time.time,
        owner: str | None = None,
        timeout_s: float = 10.0,
    ) -> PostgresJobStore:
        """Connect (up to `timeout_s`) and create the tables if they are missing."""
        # A statement (or its wait for a lock) the server does not finish in `timeout_s` fails (the job runner tries
        # again) instead of holding a pooled connection and its caller for good; the URL's own
        # `options` come after, so an operator's setting wins.
        ms = int(timeout_s * 1000)
        options = f"-c statement_timeout={ms} {conninfo_to_dict(url).get('options', '')}".strip()
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=4,
            open=False,
            timeout=timeout_s,  # a call waits this long for a connection while the server is away
            kwargs={"autocommit": True, "options": options},
            check=AsyncConnectionPool.check_connection,  # a connection the server dropped is replaced
            name="jobs",
        )
        await pool.open(wait=True, timeout=timeout_s)
        try:
            async with pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await conn.execute(_SCHEMA)
        except BaseException:
            await pool.close()
            raise
        store = cls(pool, lease_s, owner or instance_id(), now_fn)
        log.info("job store: PostgreSQL, owner %s", store.owner, extra={"stage": "jobs", "event": "store_open"})
        return store

    async def close(self) -> None:
        await self._pool.close()

    async def _one(self, sql: str, args: dict[str, Any]) -> TupleRow | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchone()

    async def _all(self, sql: str, args: dict[str, Any]) -> list[TupleRow]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchall()

    def _args(self, flow_id: str, tenant: str, **more: Any) -> dict[str, Any]:
        return {"flow_id": flow_id, "tenant": tenant, "owner": self.owner, "now": self.now_fn(), **more}

    async def get(self, flow_id: str, tenant: str = "") -> Job | None:
        return _job(await self._one(f"SELECT {_COLUMNS} FROM speechgw_jobs WHERE {_KEY}", self._args(flow_id, tenant)))

    async def enqueue(
        self, flow_id: str, record_url: str, lang: str = "", domain: str = "", tenant: str = ""
    ) -> tuple[Job, bool]:
        """Idempotent by (tenant, flowId), as the sqlite store; without `record_url` the job takes
        the stored record's URL if there is one already."""
        args = self._args(flow_id, tenant, record_url=record_url, lang=lang, domain=domain)
        row = await self._one(
            f"INSERT INTO speechgw_jobs ({_COLUMNS}) VALUES (%(flow_id)s, COALESCE(NULLIF(%(record_url)s, ''), "
            f"(SELECT record_url FROM speechgw_records WHERE {_KEY}), ''), %(lang)s, %(domain)s, 'pending', 0, "
            "%(now)s, '', NULL, %(now)s, %(now)s, %(tenant)s, 0) "
            f"ON CONFLICT (tenant, flow_id) DO NOTHING RETURNING {_COLUMNS}",
            args,
        )
        if row is not None:
            job = _job(row)
            assert job is not None
            return job, True
        existing = await self.get(flow_id, tenant)
        assert existing is not None
        return existing, False

    async def due(self, limit: int, now: float | None = None) -> list[Job]:
        """Pending jobs whose time has come and running jobs whose lease ran out, longest-due first."""
        rows = await self._all(
            f"SELECT {_COLUMNS} FROM speechgw_jobs WHERE (status='pending' AND next_attempt_at<=%(now)s) "
            "OR (status='running' AND lease_until<=%(now)s) ORDER BY next_attempt_at, created_at, flow_id "
            "LIMIT %(limit)s",
            {"now": self.now_fn() if now is None else now, "limit": limit},
        )
        return [j for j in map(_job, rows) if j is not None]

    async def next_due_at(self) -> float | None:
        """The next pending job's time, or the next lease of another gateway to run out."""
        row = await self._one(
            "SELECT MIN(CASE WHEN status='pending' THEN next_attempt_at ELSE lease_until END) FROM speechgw_jobs "
            "WHERE status='pending' OR (status='running' AND owner<>%(owner)s)",
            {"owner": self.owner},
        )
        return None if row is None or row[0] is None else float(row[0])

    async def backlog(self) -> tuple[int, float | None]:
        row = await self._one(
            "SELECT COUNT(*), MIN(created_at) FROM speechgw_jobs WHERE status IN ('pending', 'running')", {}
        )
        assert row is not None
        return int(row[0]), None if row[1] is None else float(row[1])

    async def claim(self, flow_id: str, tenant: str = "") -> Job | None:
        """pending (or running with its lease run out) -> running here, counting one attempt. A job
        another gateway is claiming at this instant is skipped (None), not waited for."""
        args = self._args(flow_id, tenant, lease_s=self.lease_s)
        return _job(
            await self._one(
                "UPDATE speechgw_jobs SET status='running', attempts=attempts+1, owner=%(owner)s, "
                "lease_until=%(now)s+%(lease_s)s, updated_at=%(now)s, last_error=CASE WHEN status='running' "
                "THEN 'the lease of ' || owner || ' ran out' ELSE last_error END "
                "WHERE (tenant, flow_id) IN (SELECT tenant, flow_id FROM speechgw_jobs "
                f"WHERE {_KEY} AND (status='pending' OR (status='running' AND lease_until<=%(now)s)) "
                f"FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}",
                args,
            )
        )

    async def renew(self, keys: list[JobKey]) -> set[JobKey]:
        """Extend the lease of these running jobs of this gateway; return those it no longer owns."""
        if not keys:
            return set()
        rows = await self._all(
            "UPDATE speechgw_jobs SET lease_until=%(until)s WHERE status='running' AND owner=%(owner)s "
            "AND (tenant, flow_id) IN (SELECT * FROM unnest(%(tenants)s::text[], %(flows)s::text[])) "
            "RETURNING tenant, flow_id",
            {
                "until": self.now_fn() + self.lease_s,
                "owner": self.owner,
                "tenants": [t for t, _ in keys],
                "flows": [f for _, f in keys],
            },
        )
        return set(keys) - {(str(r[0]), str(r[1])) for r in rows}

    async def _update(self, sets: str, where: str, args: dict[str, Any]) -> Job | None:
        return _job(
            await self._one(f"UPDATE speechgw_jobs SET {sets} WHERE {_KEY} AND {where} RETURNING {_COLUMNS}", args)
        )

    async def complete(self, flow_id: str, result: dict[str, Any], tenant: str = "") -> Job | None:
        args = self._args(flow_id, tenant, result=json.dumps(result, ensure_ascii=False))
        return await self._update(
            "status='done', result=%(result)s, last_error='', updated_at=%(now)s, lease_until=0", _MINE, args
        )

    async def retry(self, flow_id: str, error: str, next_attempt_at: float, tenant: str = "") -> Job | None:
        args = self._args(flow_id, tenant, error=error[:MAX_ERROR_CHARS], at=next_attempt_at)
        return await self._update(
            "status='pending', last_error=%(error)s, next_attempt_at=%(at)s, updated_at=%(now)s, lease_until=0",
            _MINE,
            args,
        )

    async def wait(self, flow_id: str, error: str, next_attempt_at: float, tenant: str = "") -> Job | None:
        """running -> pending for want of capacity: the attempt is given back, `waits` counts it."""
        args = self._args(flow_id, tenant, error=error[:MAX_ERROR_CHARS], at=next_attempt_at)
        return await self._update(
            "status='pending', attempts=GREATEST(attempts-1, 0), waits=waits+1, last_error=%(error)s, "
            "next_attempt_at=%(at)s, updated_at=%(now)s, lease_until=0",
            _MINE,
            args,
        )

    async def fail(self, flow_id: str, error: str, tenant: str = "") -> Job | None:
        """A pending job, a running one of this gateway, or one whose lease ran out -> failed."""
        args = self._args(flow_id, tenant, error=error[:MAX_ERROR_CHARS])
        return await self._update(
            "status='failed', last_error=%(error)s, updated_at=%(now)s, lease_until=0",
            "(status='pending' OR (status='running' AND (owner=%(owner)s OR lease_until<=%(now)s)))",
            args,
        )

    async def release_running(self) -> int:
        """This gateway's running jobs -> pending, attempt not counted (a graceful stop)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE speechgw_jobs SET status='pending', attempts=GREATEST(attempts-1, 0), "
                "next_attempt_at=%(now)s, updated_at=%(now)s, lease_until=0 WHERE status='running' AND owner=%(owner)s",
                {"now": self.now_fn(), "owner": self.owner},
            )
            return cur.rowcount

    async def record_pending(self, flow_id: str, tenant: str = "") -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO speechgw_records (flow_id, tenant, status, record_url, created_at, updated_at) "
                "VALUES (%(flow_id)s, %(tenant)s, 'pending', '', %(now)s, %(now)s) ON CONFLICT (tenant, flow_id) "
                "DO UPDATE SET status='pending', record_url='', updated_at=excluded.updated_at",
                self._args(flow_id, tenant),
            )

    async def record_stored(self, flow_id: str, url: str, tenant: str = "") -> None:
        """The spooled session is in the archive under `url`; a deferred job waiting for it gets it."""
        args = self._args(flow_id, tenant, url=url)
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO speechgw_records (flow_id, tenant, status, record_url, created_at, updated_at) "
                "VALUES (%(flow_id)s, %(tenant)s, 'stored', %(url)s, %(now)s, %(now)s) ON CONFLICT (tenant, flow_id) "
                "DO UPDATE SET status='stored', record_url=excluded.record_url, updated_at=excluded.updated_at",
                args,
            )
            await conn.execute(  # due at once: it was only waiting for this URL
                "UPDATE speechgw_jobs SET record_url=%(url)s, next_attempt_at=LEAST(next_attempt_at, %(now)s), "
                f"updated_at=%(now)s WHERE {_KEY} AND record_url=''",
                args,
            )

    async def get_record(self, flow_id: str, tenant: str = "") -> Record | None:
        row = await self._one(
            f"SELECT flow_id, tenant, status, record_url, created_at, updated_at FROM speechgw_records WHERE {_KEY}",
            self._args(flow_id, tenant),
        )
        return None if row is None else Record(*row)

    async def counts(self) -> dict[str, int]:
        rows = await self._all("SELECT status, COUNT(*) FROM speechgw_jobs GROUP BY status", {})
        found = {str(r[0]): int(r[1]) for r in rows}
        return {s: found.get(s, 0) for s in STATUSES}
