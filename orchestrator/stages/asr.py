"""ASR adapter: the only Opus link (SPEC §1, §3). PCM -> Opus packets (in an executor) and VAD
endpoints go to `asr.v1.Recognize/Stream`; partials and finals come back.

Routing waits for the language (SPEC §4), but the session need not: while LID is still listening,
the stage streams to the default route's pool (the provisional stream) and shows its partials. When
the language is known, the chosen pool gets a new stream with that language and everything sent so
far replayed from the first sample; the provisional stream's finals are dropped, so every final
comes from the chosen pool. Without a language, or if the chosen pool cannot take the session, the
provisional stream keeps it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import grpc

from common.audio import CHANNELS, SAMPLE_RATE
from orchestrator import metrics
from orchestrator.core.events import (
    Finalize,
    LanguageDecided,
    SpeechBoundary,
    StageLatency,
    StageName,
    Transcript,
)
from orchestrator.routing.pool import AsrPool, Lease, Member, MemberBusy, PoolExhausted, PoolSet, open_with_retries
from orchestrator.stages.base import AudioSource, SendTimes, StageContext
from orchestrator.stages.opus_link import OpusLink, OpusLinkConfig
from orchestrator.stages.words import words_of
from proto import asr_pb2, asr_pb2_grpc

log = logging.getLogger(__name__)


class AsrError(RuntimeError):
    """The ASR service answered an `error` event."""


class AsrUnavailable(RuntimeError):
    """No member of the routed pool could take the session (busy, down, breaker open)."""


class _Wire:
    """Where the session's ClientFrames go: the current stream's queue. Until `settle()` it also
    keeps every frame, so a stream opened later (the chosen pool) hears the session from its start."""

    def __init__(self) -> None:
        self._out: asyncio.Queue[asr_pb2.ClientFrame | None] | None = None
        self._log: list[asr_pb2.ClientFrame] | None = []
        self._ended = False
        self._queues: list[asyncio.Queue[asr_pb2.ClientFrame | None]] = []  # every stream's, for close()
        self.sent_at = SendTimes()  # packet seq -> send time, for latency

    def send(self, frame: asr_pb2.ClientFrame) -> None:
        if self._log is not None:
            self._log.append(frame)
        if self._out is not None:
            self._out.put_nowait(frame)

    def attach(self, out: asyncio.Queue[asr_pb2.ClientFrame | None]) -> None:
        """Send from now on to `out`, after everything sent so far."""
        for frame in self._log or ():
            out.put_nowait(frame)
        if self._ended:
            out.put_nowait(None)
        self._out = out
        self._queues.append(out)

    def settle(self) -> None:
        self._log = None

    def end(self) -> None:
        self._ended = True
        if self._out is not None:
            self._out.put_nowait(None)

    def close(self) -> None:
        """The stage is over: end the request stream of every call it opened. A call that failed by
        itself (a reset connection) leaves gRPC's task that reads its requests waiting on the queue;
        without an end it is collected pending, and its generator closed while running."""
        for out in self._queues:
            out.put_nowait(None)
        self._queues = []


@dataclass
class _Stream:
    pool: AsrPool
    lease: Lease[grpc.aio.StreamStreamCall]
    held_finals: list[Transcript] | None = field(default_factory=list)  # None: finals pass straight on


class AsrStage:
    name = StageName.ASR
    source = AudioSource.CLEAN

    def __init__(
        self,
        pools: PoolSet,
        link: OpusLinkConfig,
        batch_ms: int,
        executor: Executor | None,
        partial_interval_ms: int,
        open_timeout_s: float,
        provisional: bool = True,
        *,
        admission_wait_s: float = 0.0,
        admission_poll_s: float = 0.2,
        vad_endpoints: bool = False,
        provisional_lang: str = "",
    ) -> None:
        self._vad_endpoints = vad_endpoints  # VAD runs: the ASR hears only the speech it marks
        self._pools = pools
        self._link = link
        self.batch_ms = batch_ms
        self._executor = executor
        self._partial_interval_ms = partial_interval_ms
        self._open_timeout_s = open_timeout_s
        self._provisional = provisional
        self._provisional_lang = provisional_lang
        self._admission_wait_s = admission_wait_s
        self._admission_poll_s = admission_poll_s

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
                vad_endpoints=self._vad_endpoints and ctx.start.vad_endpoints,
            )
        )

    async def run(self, ctx: StageContext) -> None:
        """Every task of the stage lives in one task group (STYLE §6): an error in any of them
        fails the stage with its own cause."""
        wire = _Wire()
        link = OpusLink(self._link)
        language: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        streams: list[_Stream] = []
        try:
            async with asyncio.TaskGroup() as tg:
                listener = tg.create_task(self._listen(ctx, wire, language))
                await self._transcribe(ctx, tg, link, wire, language, streams)
                listener.cancel()
        finally:
            for stream in streams:
                stream.lease.value.cancel()
                stream.lease.release()
            wire.close()

    async def _listen(self, ctx: StageContext, wire: _Wire, language: asyncio.Future[str]) -> None:
        """What the session tells the stage: VAD endpoints and the client's finalize travel with the
        audio (also those given before a stream is open); the language settles the route."""
        while True:
            item = await ctx.inputs.get()
            if isinstance(item, SpeechBoundary | Finalize):
                wire.send(_endpoint_frame(item))
            elif isinstance(item, LanguageDecided) and not language.done():
                language.set_result(item.lang)

    async def _transcribe(
        self,
        ctx: StageContext,
        tg: asyncio.TaskGroup,
        link: OpusLink,
        wire: _Wire,
        language: asyncio.Future[str],
        streams: list[_Stream],
    ) -> None:
        provisional = self._provisional and not language.done()
        lang = self._provisional_lang if provisional else await language
        try:
            first = await self._open(ctx, link, wire, lang)
        except AsrUnavailable:
            if not provisional:
                raise
            # The default pool cannot take it: wait for the language and its own pool instead.
            provisional = False
            first = await self._open(ctx, link, wire, await language)
        streams.append(first)
        if not provisional:
            wire.settle()
            first.held_finals = None
        tg.create_task(self._produce(ctx, link, wire))
        reader = tg.create_task(self._read(ctx, first, wire))
        if provisional:
            waiting: set[asyncio.Future[object]] = {reader, language}  # type: ignore[arg-type]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                await reader  # the provisional stream ended or failed before the language came
            chosen = await self._settle(ctx, link, wire, first, await language)
            if chosen is not first:
                streams.append(chosen)
                reader.cancel()
                first.lease.value.cancel()
                first.lease.release()
                reader = tg.create_task(self._read(ctx, chosen, wire))
        await reader

    async def _settle(self, ctx: StageContext, link: OpusLink, wire: _Wire, first: _Stream, lang: str) -> _Stream:
        """The language is known: open the chosen pool's stream with that language (even on the same
        pool: the engine needs the language from the start, a multilingual model guesses worse) and
        replay the session to it. The provisional stream keeps the session when it already has that
        language (ASR_PROVISIONAL_LANG), when there is no language and it is on the default route, or
        when the chosen pool cannot take the session."""
        chosen = first
        if lang != self._provisional_lang:
            try:
                chosen = await self._open(ctx, link, wire, lang)  # replays the session so far
            except AsrUnavailable as exc:
                log.warning(
                    "chosen ASR pool unavailable; staying on the provisional one",
                    extra={"flowId": ctx.flow_id, "stage": self.name, "lang": lang, "err_code": str(exc)},
                )
        wire.settle()
        if chosen is first and first.held_finals is not None:
            held, first.held_finals = first.held_finals, None
            for final in held:
                ctx.report(final)
        chosen.held_finals = None
        return chosen

    async def _open(self, ctx: StageContext, link: OpusLink, wire: _Wire, lang: str) -> _Stream:
        pool = self._pools.route(lang, ctx.start.domain)

        async def open_on(member: Member) -> grpc.aio.StreamStreamCall:
            out: asyncio.Queue[asr_pb2.ClientFrame | None] = asyncio.Queue()
            out.put_nowait(self._start_frame(ctx, link.start_codec, lang))
            call = asr_pb2_grpc.RecognizeStub(member.channel()).Stream(_drain(out))
            try:
                first = await asyncio.wait_for(call.read(), self._open_timeout_s)
            except BaseException:
                call.cancel()
                out.put_nowait(None)  # ends the request stream (see _Wire.close)
                raise
            if first is grpc.aio.EOF:
                out.put_nowait(None)
                await call  # raises the RPC's error status
                raise AsrError("asr_closed: the ASR closed the stream before admitting it")
            if first.type == "error":
                call.cancel()
                out.put_nowait(None)
                if first.code == "busy":  # the member's admission refusal (its status may arrive as INTERNAL)
                    raise MemberBusy(first.text)
                raise AsrError(f"{first.code or 'asr_error'}: {first.text}")
            wire.attach(out)
            return call

        lease = await self._admit(pool, open_on)
        metrics.ASR_LINK_SESSIONS.labels(link.codec).inc()
        log.info(
            "asr link open",
            extra={
                "flowId": ctx.flow_id,
                "stage": self.name,
                "asr_link_codec": link.codec,
                "lang": lang,
                "model": f"{pool.name}@{lease.member.addr}",
            },
        )
        return _Stream(pool, lease)

    async def _admit(
        self, pool: AsrPool, open_on: Callable[[Member], Awaitable[grpc.aio.StreamStreamCall]]
    ) -> Lease[grpc.aio.StreamStreamCall]:
        """Open a stream on the pool. Past capacity (every member busy) the session waits up to
        ASR_ADMISSION_WAIT_SEC in line for a member, its audio kept on the wire, before it is
        refused: degrade in order, a short queue before record-only."""
        deadline = time.monotonic() + self._admission_wait_s
        while True:
            try:
                return await open_with_retries(pool, open_on, time.monotonic, self._pools.table.max_attempts)
            except PoolExhausted as exc:
                if exc.reason != "busy" or time.monotonic() + self._admission_poll_s > deadline:
                    raise AsrUnavailable(f"record-only: {exc}") from None
            metrics.ASR_ADMISSION_WAITING.inc()
            try:
                await asyncio.sleep(self._admission_poll_s)
            finally:
                metrics.ASR_ADMISSION_WAITING.dec()

    async def _produce(self, ctx: StageContext, link: OpusLink, wire: _Wire) -> None:
        loop = asyncio.get_running_loop()
        async for block in ctx.feed.blocks():
            packets, failed = await loop.run_in_executor(self._executor, link.encode, block.pcm, block.pts_ns)
            self._send(ctx, link, wire, packets, failed)
        self._send(ctx, link, wire, *link.flush())
        wire.end()

    def _send(
        self, ctx: StageContext, link: OpusLink, wire: _Wire, packets: list[asr_pb2.OpusPacket], failed: bool
    ) -> None:
        if failed:
            metrics.PCM_TO_OPUS_FAIL.inc()
            log.warning(
                "opus encoder failed; PCM passthrough from here",
                extra={
                    "flowId": ctx.flow_id,
                    "stage": self.name,
                    "asr_link_codec": "pcm",
                    "seq": packets[0].seq if packets else None,
                    "err_code": link.failed_reason,
                },
            )
        if not packets:
            return
        now = time.monotonic()
        for p in packets:
            codec = "pcm" if p.pcm or link.start_codec == "pcm" else "opus"
            metrics.ASR_LINK_BYTES.labels(codec).inc(len(p.data))
        wire.sent_at.mark(packets[0].seq, now)
        if len(packets) == 1:
            wire.send(asr_pb2.ClientFrame(opus=packets[0]))
        else:
            wire.send(asr_pb2.ClientFrame(batch=asr_pb2.OpusBatch(packets=packets)))

    async def _read(self, ctx: StageContext, stream: _Stream, wire: _Wire) -> None:
        call = stream.lease.value
        try:
            while (ev := await call.read()) is not grpc.aio.EOF:
                if ev.type in ("partial", "final"):
                    start_s, end_s = [*ev.ts, 0.0, 0.0][:2]
                    transcript = Transcript(
                        ev.type == "final",
                        ev.text,
                        start_s,
                        end_s,
                        ev.lang,
                        ev.from_finalize,
                        pool=stream.pool.name,
                        words=words_of(ev),
                        confidence=ev.confidence if ev.HasField("confidence") else None,
                    )
                    if transcript.final and stream.held_finals is not None:
                        stream.held_finals.append(transcript)  # provisional: wait for the route
                        continue
                    ctx.report(transcript)
                    sent = wire.sent_at.take(int(end_s * 1000) // self._link.frame_ms - 1)
                    if transcript.final and sent is not None:
                        ctx.report(StageLatency(self.name, (time.monotonic() - sent) * 1000))
                elif ev.type == "error":
                    raise AsrError(f"{ev.code or 'asr_error'}: {ev.text}")
                elif ev.type == "end":
                    return
            await call  # EOF without `end`: surface the status
        except grpc.aio.AioRpcError as exc:
            stream.lease.member.record_failure(time.monotonic(), exc.code().name)
            raise


def _endpoint_frame(b: SpeechBoundary | Finalize) -> asr_pb2.ClientFrame:
    if isinstance(b, Finalize):
        return asr_pb2.ClientFrame(endpoint=asr_pb2.Endpoint(kind=asr_pb2.Endpoint.FINALIZE, pts=b.pts_ns))
    kind = asr_pb2.Endpoint.SPEECH_START if b.kind == "start" else asr_pb2.Endpoint.SPEECH_END
    return asr_pb2.ClientFrame(endpoint=asr_pb2.Endpoint(kind=kind, pts=b.pts_ns))


async def _drain(out: asyncio.Queue[asr_pb2.ClientFrame | None]) -> AsyncIterator[asr_pb2.ClientFrame]:
    while (item := await out.get()) is not None:
        yield item
