"""ASR adapter: the only Opus link (SPEC §1, §3). PCM -> Opus packets (in an executor) and VAD
endpoints go to `asr.v1.Recognize/Stream`; partials and finals come back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import Executor

import grpc

from orchestrator import metrics
from orchestrator.opus_link import OpusLink, OpusLinkConfig
from orchestrator.pool import Member, PoolExhausted, PoolSet, open_with_retries
from orchestrator.protocol import CHANNELS, SAMPLE_RATE
from orchestrator.stage_events import SpeechBoundary, StageLatency, Transcript
from orchestrator.stages.base import StageContext
from proto import asr_pb2, asr_pb2_grpc

log = logging.getLogger(__name__)
_SENT_MEMORY = 512  # packets whose send time is kept for latency figures


class AsrError(RuntimeError):
    """The ASR service answered an `error` event."""


class AsrUnavailable(RuntimeError):
    """No member of the routed pool could take the session (busy, down, breaker open)."""


class AsrStage:
    name = "asr"
    source = "clean"

    def __init__(
        self,
        pools: PoolSet,
        link: OpusLinkConfig,
        batch_ms: int,
        executor: Executor | None,
        partial_interval_ms: int,
        open_timeout_s: float,
    ) -> None:
        self._pools = pools
        self._link = link
        self.batch_ms = batch_ms
        self._executor = executor
        self._partial_interval_ms = partial_interval_ms
        self._open_timeout_s = open_timeout_s

    def _start_frame(self, ctx: StageContext, codec: str, lang: str) -> asr_pb2.ClientFrame:
        return asr_pb2.ClientFrame(
            start=asr_pb2.Start(
                flow_id=ctx.flow_id,
                codec=codec,
                sr=SAMPLE_RATE,
                channels=CHANNELS,
                frame_ms=self._link.frame_ms,
                bitrate=self._link.bitrate,
                vbr=self._link.vbr,
                lang_hint=lang,
                domain=ctx.start.domain,
                hotwords=list(ctx.start.hotwords),
                partial_interval_ms=self._partial_interval_ms,
            )
        )

    async def run(self, ctx: StageContext) -> None:
        # Audio waits in the feed until the language is known (SPEC §4: LID answers early), so the
        # chosen pool hears the session from its first sample; so do the VAD's endpoints.
        held: list[SpeechBoundary] = []
        ctx.on_boundary = held.append
        lang = await ctx.language if ctx.language is not None else ""
        pool = self._pools.route(lang, ctx.start.domain)
        link = OpusLink(self._link)
        out: asyncio.Queue[asr_pb2.ClientFrame | None] = asyncio.Queue()

        async def open_on(member: Member) -> grpc.aio.StreamStreamCall:
            nonlocal out
            out = asyncio.Queue()
            out.put_nowait(self._start_frame(ctx, link.start_codec, lang))
            call = asr_pb2_grpc.RecognizeStub(member.channel()).Stream(_drain(out))
            try:
                first = await asyncio.wait_for(call.read(), self._open_timeout_s)
            except BaseException:
                call.cancel()
                raise
            if first is grpc.aio.EOF:
                await call  # raises the RPC's error status
                raise AsrError("asr_closed: the ASR closed the stream before admitting it")
            if first.type == "error":
                call.cancel()
                if first.code == "busy":  # the refusal; its status may arrive as INTERNAL (grpc#36066)
                    raise grpc.aio.AioRpcError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(), first.text
                    )
                raise AsrError(f"{first.code or 'asr_error'}: {first.text}")
            return call

        try:
            lease = await open_with_retries(pool, open_on, time.monotonic, self._pools.table.max_attempts)
        except PoolExhausted as exc:
            raise AsrUnavailable(f"record-only: {exc}") from None
        metrics.ASR_LINK_SESSIONS.labels(link.codec).inc()
        log.info(
            "asr link open",
            extra={
                "flowId": ctx.flow_id,
                "stage": "asr",
                "asr_link_codec": link.codec,
                "lang": lang,
                "model": f"{pool.name}@{lease.member.addr}",
            },
        )
        with lease:
            try:
                await self._stream(ctx, link, out, lease.value, held)
            except grpc.aio.AioRpcError as exc:
                lease.member.record_failure(time.monotonic(), exc.code().name)
                raise

    async def _stream(
        self,
        ctx: StageContext,
        link: OpusLink,
        out: asyncio.Queue[asr_pb2.ClientFrame | None],
        call: grpc.aio.StreamStreamCall,
        held: list[SpeechBoundary],
    ) -> None:
        loop = asyncio.get_running_loop()
        sent_at: OrderedDict[int, float] = OrderedDict()

        def on_boundary(b: SpeechBoundary) -> None:
            kind = asr_pb2.Endpoint.SPEECH_START if b.kind == "start" else asr_pb2.Endpoint.SPEECH_END
            out.put_nowait(asr_pb2.ClientFrame(endpoint=asr_pb2.Endpoint(kind=kind, pts=b.pts_ns)))

        async def produce() -> None:
            async for block in ctx.feed.blocks():
                packets, failed = await loop.run_in_executor(self._executor, link.encode, block.pcm, block.seq)
                if failed:
                    metrics.PCM_TO_OPUS_FAIL.inc()
                    log.warning(
                        "opus encoder failed; PCM passthrough from here",
                        extra={
                            "flowId": ctx.flow_id,
                            "stage": "asr",
                            "asr_link_codec": "pcm",
                            "seq": block.seq,
                            "err_code": link.failed_reason,
                        },
                    )
                now = time.monotonic()
                for p in packets:
                    sent_at[p.seq] = now
                    codec = "pcm" if p.pcm or link.start_codec == "pcm" else "opus"
                    metrics.ASR_LINK_BYTES.labels(codec).inc(len(p.data))
                while len(sent_at) > _SENT_MEMORY:
                    sent_at.popitem(last=False)
                if len(packets) == 1:
                    out.put_nowait(asr_pb2.ClientFrame(opus=packets[0]))
                else:
                    out.put_nowait(asr_pb2.ClientFrame(batch=asr_pb2.OpusBatch(packets=packets)))
            out.put_nowait(None)

        for boundary in held:  # endpoints found while the language was pending; the ASR
            on_boundary(boundary)  # applies an endpoint ahead of its audio once the audio arrives
        ctx.on_boundary = on_boundary
        producer = asyncio.create_task(produce())
        try:
            while (ev := await call.read()) is not grpc.aio.EOF:
                if ev.type in ("partial", "final"):
                    start_s, end_s = [*ev.ts, 0.0, 0.0][:2]
                    ctx.report(Transcript(ev.type == "final", ev.text, start_s, end_s, ev.lang))
                    sent = sent_at.get(int(end_s * 1000) // self._link.frame_ms - 1)
                    if ev.type == "final" and sent is not None:
                        ctx.report(StageLatency(self.name, (time.monotonic() - sent) * 1000))
                elif ev.type == "error":
                    raise AsrError(f"{ev.code or 'asr_error'}: {ev.text}")
                elif ev.type == "end":
                    break
            else:
                await call  # EOF without `end`: surface the status
        finally:
            ctx.on_boundary = None
            producer.cancel()
            call.cancel()


async def _drain(out: asyncio.Queue[asr_pb2.ClientFrame | None]) -> AsyncIterator[asr_pb2.ClientFrame]:
    while (item := await out.get()) is not None:
        yield item
