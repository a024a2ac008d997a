"""Moves encoded archives from the spool into the store (SPEC §4: idempotent by flowId, retries, degradation).

`commit` tries right away unless the store is known to be down; the background `run` loop retries every
pending flow with exponential back-off, and uploads what a previous process left behind at start-up.
Per-flow locks plus "always upload the newest pending archive" mean an older retry never overwrites a
newer archive of the same flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from pathlib import Path

from prometheus_client import Counter, Gauge

from common import tracing
from services.compress.session import CONTENT_TYPES, KEY_PREFIX
from services.compress.spool import PendingSpool
from services.compress.store import Store, StoreUnavailable

log = logging.getLogger(__name__)

UPLOAD_FAILURES = Counter("compress_upload_failures_total", "Archive uploads the store refused or missed")
UPLOADS = Counter("compress_uploads_total", "Archives written to the store", ["path"])
PENDING = Gauge("compress_pending_archives", "Encoded archives spooled locally, waiting for the store")
RECOVERED = Counter(
    "compress_recovered_archives_total",
    "Unfinished archives a killed process left, at start: archived (what decodes of them) or unreadable",
    ["outcome"],
)
for _outcome in ("archived", "unreadable"):
    RECOVERED.labels(_outcome)
for _path in ("direct", "retry"):
    UPLOADS.labels(_path)  # exported from the start, at 0


def key_for(name: str, archive: Path) -> str:
    """The store key of an archive name's spooled file (session.record_key)."""
    return f"{KEY_PREFIX}/{name}{archive.suffix}"


class Uploader:
    def __init__(
        self, store: Store, spool: PendingSpool, executor: Executor, retry_base_s: float, retry_max_s: float
    ) -> None:
        self.store = store
        self.spool = spool
        self.executor = executor
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.store_down = False  # open circuit: skip direct attempts, let the loop probe
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # per flow: lock, number of users
        self._wake = asyncio.Event()

    async def commit(self, flow_id: str) -> str:
        """Store the newest pending archive of `flow_id` (an archive name, `<namespace>/<flow_id>`):
        "stored", or "spooled" when it must wait."""
        if not self.store_down and await self._upload_newest(flow_id, path="direct"):
            return "stored"
        self._wake.set()
        await self.refresh_gauge()
        return "spooled"

    async def _upload_newest(self, flow_id: str, path: str) -> bool:
        # A direct upload is a child of the Archive call's span; a retry, a trace of its own with the flowId.
        flow = None if path == "direct" else flow_id.partition("/")[2]
        with tracing.span("archive.upload", flow_id=flow, **{"speechgw.upload_path": path}) as span:
            stored = await self._upload_newest_now(flow_id, path)
            if span is not None:
                span.set_attribute("speechgw.stored", stored)
            return stored

    async def _upload_newest_now(self, flow_id: str, path: str) -> bool:
        loop = asyncio.get_running_loop()
        async with self._flow_lock(flow_id):
            archive = await loop.run_in_executor(self.executor, self.spool.newest, flow_id)
            if archive is None:  # a concurrent call of the same flow already stored it
                return True
            key = key_for(flow_id, archive)
            content_type = CONTENT_TYPES[archive.suffix.lstrip(".")]
            try:
                await loop.run_in_executor(self.executor, self.store.put, archive, key, content_type)
            except StoreUnavailable as exc:
                UPLOAD_FAILURES.inc()
                self.store_down = True
                log.warning(
                    "store refused archive",
                    extra={
                        "flowId": flow_id,
                        "stage": "compress",
                        "err_code": "store_unavailable",
                        "event": str(exc),
                    },
                )
                return False
            self.store_down = False  # any success closes the circuit
            await loop.run_in_executor(self.executor, self.spool.drop_upto, flow_id, archive)
            UPLOADS.labels(path).inc()
        return True

    @contextlib.asynccontextmanager
    async def _flow_lock(self, flow_id: str) -> AsyncIterator[None]:
        """Serialise one flow's uploads; the lock lives only while someone uses or waits for it."""
        lock, users = self._locks.get(flow_id, (asyncio.Lock(), 0))
        self._locks[flow_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[flow_id]
            if users == 1:
                del self._locks[flow_id]
            else:
                self._locks[flow_id] = (lock, users - 1)

    async def refresh_gauge(self) -> int:
        count = await asyncio.get_running_loop().run_in_executor(self.executor, self.spool.count)
        PENDING.set(count)
        return count

    async def run(self) -> None:
        """Retry pending flows until the store takes them; back off exponentially while it is down.
        The first pass uploads what an earlier process left behind."""
        delay = self.retry_base_s
        first = True
        while True:
            if self.store_down:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
            elif not first:
                await self._wake.wait()
                self._wake.clear()
                if self.store_down:  # a direct attempt just failed: back off before probing
                    continue
            first = False
            flows = await asyncio.get_running_loop().run_in_executor(self.executor, self.spool.pending_flows)
            ok = True
            for flow_id in flows:
                if not await self._upload_newest(flow_id, path="retry"):
                    ok = False
                    break
            self.store_down = not ok
            if ok:
                delay = self.retry_base_s
                if flows:
                    log.info(
                        "pending archives stored",
                        extra={"stage": "compress", "event": "spool_drained", "bytes_out": len(flows)},
                    )
            await self.refresh_gauge()
