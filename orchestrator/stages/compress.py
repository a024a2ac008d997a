"""Archive adapter: the session's PCM to `compress.v1.Compress/Archive`, `record_url` back (SPEC §4).

With the gateway's archive spool on (`ARCHIVE_SPOOL_MAX_BYTES` > 0) every block the session accepts is
also written to the gateway's disk as it arrives (the stage's feed taps it, before the blocks are
gathered into `COMPRESS_BATCH_MS` messages) and kept there until the archive answers. If the call
fails, the session hears a non-fatal `archive_unavailable` with `mode: "spooled"`, the rest of its
audio still goes to the spool, and at the end of audio the whole recording is uploaded again under the
same flowId (the same key) for up to `ARCHIVE_RETRY_WINDOW_SEC`; after that the background uploader
(orchestrator/recordings/) keeps trying and `GET /v1/flows/{flowId}/transcript` shows the record
pending until it is stored (docs/storage.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from orchestrator.core.events import RecordPending, RecordReady, StageLatency, StageName
from orchestrator.recordings.policy import RetrySchedule
from orchestrator.recordings.spool import ArchiveSpool, SpoolWriter
from orchestrator.recordings.uploader import RecordBook, SpoolUploader
from orchestrator.stages.base import AudioSource, StageContext, frames
from proto import common_pb2, compress_pb2, compress_pb2_grpc

TENANT_METADATA = "speechgw-tenant-bin"  # binary metadata: a `sub` may hold any UTF-8


@dataclass(frozen=True)
class SpoolLink:
    """What the archive stage needs to keep a session's audio through an archive failure."""

    spool: ArchiveSpool
    uploader: SpoolUploader
    records: RecordBook
    retry_window_s: float = 5.0
    retry: RetrySchedule = field(default_factory=lambda: RetrySchedule(0.5, 2.0))


class CompressStage:
    name = StageName.COMPRESS
    source = AudioSource.CLEAN

    def __init__(self, channel: grpc.aio.Channel, batch_ms: int, spool: SpoolLink | None = None) -> None:
        self._stub = compress_pb2_grpc.CompressStub(channel)
        self.batch_ms = batch_ms
        self._spool = spool

    async def run(self, ctx: StageContext) -> None:
        writer = self._spool.spool.writer(ctx.flow_id, ctx.tenant) if self._spool is not None else None
        if writer is not None:
            ctx.feed.tap(writer.take)  # before the first read: every accepted block, as it comes
        audio = frames(ctx)
        try:
            first = await anext(audio)
            if first.last and not first.pcm:
                return  # the session accepted no audio: there is nothing to archive
            await self._archive(ctx, first, audio, writer)
        except BaseException:
            if writer is not None and writer.kept and writer.bytes:
                # Cancelled (the session gave up on the stage) or a bug: keep what was spooled so far;
                # the background uploader stores it (shielded: a cancelled task still finishes this).
                await asyncio.shield(self._hand_over(ctx, writer))
            raise

    async def _archive(
        self,
        ctx: StageContext,
        first: common_pb2.AudioFrame,
        audio: AsyncIterator[common_pb2.AudioFrame],
        writer: SpoolWriter | None,
    ) -> None:
        # The owner travels as call metadata: the archive keeps each tenant's objects apart (docs/storage.md).
        metadata = ((TENANT_METADATA, ctx.tenant.encode()),) if ctx.tenant else None
        call = self._stub.Archive(metadata=metadata)
        ended_at = time.monotonic()
        failure: BaseException | None = None
        frame: common_pb2.AudioFrame | None = first
        while frame is not None:
            if frame.last:
                ended_at = time.monotonic()
            if failure is None:
                try:
                    await call.write(frame)
                except Exception as exc:  # the call ended (its status, InvalidStateError, a batch error)
                    failure = exc
                    self._on_failure(ctx, writer, exc)
            frame = None if frame.last else await anext(audio, None)
        result: compress_pb2.ArchiveResult | None = None
        if failure is None:
            try:
                await call.done_writing()
                result = await call
            except Exception as exc:
                self._on_failure(ctx, writer, exc)
        else:
            call.cancel()
        if result is None:
            assert writer is not None  # _on_failure raised otherwise
            result = await self._upload_again(ctx, writer)
            if result is None:
                return  # handed over: the record is pending, the session ends without record_url
        elif writer is not None:
            await writer.discard()  # the archive has it
        ctx.report(StageLatency(self.name, (time.monotonic() - ended_at) * 1000))
        ctx.report(
            RecordReady(result.record_url, result.duration_s, result.bytes, result.codec, result.status or "stored")
        )

    def _on_failure(self, ctx: StageContext, writer: SpoolWriter | None, exc: BaseException) -> None:
        """The call failed: without the spool the stage fails with it; with it the session is told
        its audio is kept, and the stage goes on spooling."""
        if writer is None or not writer.kept:
            raise exc
        ctx.report(RecordPending(describe(exc)))

    async def _upload_again(self, ctx: StageContext, writer: SpoolWriter) -> compress_pb2.ArchiveResult | None:
        """The audio has ended: upload the whole spooled session again, retrying for the window;
        None once handed over to the background uploader (or if the spool could not keep it)."""
        link = self._spool
        assert link is not None
        await writer.flush()  # every accepted block in the file
        rec = writer.rec
        if not writer.kept or rec is None:
            raise RuntimeError("the archive failed and the spool could not keep the session's audio")
        link.uploader.claimed.add(rec.pcm)  # before it is sealed: the background loop leaves it alone
        try:
            await writer.seal()
            deadline = time.monotonic() + link.retry_window_s
            failures = 0
            while True:
                outcome, result = await link.uploader.attempt(rec)
                if outcome != "failed":
                    writer.kept = False  # stored, or refused as invalid: either way no longer spooled
                if result is not None:
                    return result
                if outcome == "dropped":
                    raise RuntimeError("the archive refused the spooled session as invalid")
                failures += 1
                delay = link.retry.delay_s(failures)
                if time.monotonic() + delay > deadline:
                    break
                await asyncio.sleep(delay)
        finally:
            link.uploader.claimed.discard(rec.pcm)
        await self._hand_over(ctx, writer)
        return None

    async def _hand_over(self, ctx: StageContext, writer: SpoolWriter) -> None:
        """The background uploader owns the recording from now on: sealed, recorded as pending."""
        link = self._spool
        assert link is not None
        with contextlib.suppress(OSError):
            await writer.seal()
        if not writer.kept:
            return  # a write failed meanwhile: the recording was dropped, there is nothing to hand over
        writer.kept = False
        await link.records.record_pending(ctx.flow_id, ctx.tenant)
        link.uploader.wake()


def describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
