"""Hands spooled sessions to the archive: one `Archive` call with the whole recording, under the same
flowId and tenant, so under the same key (the archive is idempotent by flow: a re-upload replaces the
object; docs/storage.md). The background loop retries with backoff until an archive member answers,
and records every stored URL where `GET /v1/flows/{flowId}/transcript` finds it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

import grpc

from common.audio import BYTES_PER_S, NS_PER_SAMPLE
from orchestrator.recordings.policy import RetrySchedule
from orchestrator.recordings.spool import ArchiveSpool, SpooledRecording
from orchestrator.stages.base import make_frame
from proto import common_pb2, compress_pb2, compress_pb2_grpc

log = logging.getLogger(__name__)
TENANT_METADATA = "speechgw-tenant-bin"  # as the live archive stage sends it (stages/compress.py)
Upload = Callable[[SpooledRecording], Awaitable[compress_pb2.ArchiveResult]]


class RecordBook(Protocol):
    """Where the gateway keeps each spooled session's record state (the job store's `records` table)."""

    async def record_pending(self, flow_id: str, tenant: str = "") -> None: ...

    async def record_stored(self, flow_id: str, url: str, tenant: str = "") -> None: ...


def archive_uploader(
    channel: grpc.aio.Channel, spool: ArchiveSpool, chunk_bytes: int = BYTES_PER_S, timeout_s: float = 120.0
) -> Upload:
    """`Upload` over the archive's gRPC channel: the spooled PCM as AudioFrames of `chunk_bytes`, the
    last one marked `last`."""
    stub = compress_pb2_grpc.CompressStub(channel)

    async def upload(rec: SpooledRecording) -> compress_pb2.ArchiveResult:
        size = (await spool.run(rec.pcm.stat)).st_size

        async def frames() -> AsyncIterator[common_pb2.AudioFrame]:
            offset = seq = 0
            while offset < size:
                data = await spool.run(spool.files.read, rec, offset, min(chunk_bytes, size - offset))
                if not data:
                    raise OSError(f"{rec.pcm.name} is shorter than {size} bytes")
                last = offset + len(data) >= size
                yield make_frame(rec.flow_id, seq, offset // 2 * NS_PER_SAMPLE, data, last)
                offset += len(data)
                seq += 1

        metadata = ((TENANT_METADATA, rec.tenant.encode()),) if rec.tenant else None
        result: compress_pb2.ArchiveResult = await stub.Archive(frames(), metadata=metadata, timeout=timeout_s)
        return result

    return upload


class SpoolUploader:
    """Uploads sealed recordings, oldest first, until the spool is empty; after a failure it waits
    `schedule.delay_s(failures)` (or until woken) and tries again. A recording a live session is
    still uploading itself is `claimed` and left alone."""

    def __init__(
        self,
        spool: ArchiveSpool,
        upload: Upload,
        records: RecordBook,
        schedule: RetrySchedule,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.spool, self._upload, self.records, self.schedule = spool, upload, records, schedule
        self._on_outcome = on_outcome
        self._wake = asyncio.Event()
        self.claimed: set[Path] = set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            ok = True
            for rec in await self.spool.run(self.spool.files.sealed):
                if rec.pcm in self.claimed:
                    continue
                outcome, _ = await self.attempt(rec)
                if outcome == "failed":
                    ok = False
                    break
            failures = 0 if ok else failures + 1
            if ok:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.schedule.delay_s(failures))

    async def upload_one(self, rec: SpooledRecording) -> compress_pb2.ArchiveResult | None:
        """Store one sealed recording; its result, or None when the archive did not take it (it stays
        spooled, unless the archive refused it as invalid: no retry can help it, it is dropped)."""
        return (await self.attempt(rec))[1]

    async def attempt(self, rec: SpooledRecording) -> tuple[str, compress_pb2.ArchiveResult | None]:
        """("stored", result); ("dropped", None) when the archive refused it as invalid (or it is gone):
        it left the spool; ("failed", None): it stays spooled, to be tried again."""
        extra = {"flowId": rec.flow_id, "stage": "archive_spool"}
        try:
            size = (await self.spool.run(rec.pcm.stat)).st_size
        except OSError:
            return "dropped", None  # gone: another upload of it finished first
        try:
            if size == 0:
                raise ValueError("empty recording")
            result = await self._upload(rec)
        except (grpc.aio.AioRpcError, ValueError) as exc:
            invalid = isinstance(exc, ValueError) or exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            if not invalid:
                self._outcome("failed")
                log.warning("spooled session not archived yet", extra={**extra, "err_code": _code(exc)})
                return "failed", None
            log.error("spooled session refused by the archive, dropped", extra={**extra, "err_code": _code(exc)})
            self._outcome("dropped")
            await self.spool.run(self.spool.files.discard, rec)
            self.spool.forget(size)
            return "dropped", None
        except Exception as exc:  # disk or network trouble: the recording stays; try later
            self._outcome("failed")
            log.warning("spooled session not archived yet", extra={**extra, "err_code": type(exc).__name__})
            return "failed", None
        await self.records.record_stored(rec.flow_id, result.record_url, rec.tenant)
        await self.spool.run(self.spool.files.discard, rec)
        self.spool.forget(size)
        self._outcome("stored")
        log.info("spooled session archived", extra={**extra, "event": "stored", "bytes_out": result.bytes})
        return "stored", result

    def _outcome(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)


def _code(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    return type(exc).__name__
