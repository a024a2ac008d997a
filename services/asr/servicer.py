"""Thin gRPC adapter of `asr.v1.Recognize/Stream`: validate Start, admit, run an `AsrSession`,
map its errors to status codes (SPEC §3, §4)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from proto import asr_pb2, asr_pb2_grpc
from services.asr import metrics
from services.asr.config import AsrConfig
from services.asr.engines import Engine
from services.asr.scheduler import Admission, Busy, DecodeScheduler
from services.asr.session import AsrSession, SessionError, StreamParams

log = logging.getLogger(__name__)


class RecognizeServicer(asr_pb2_grpc.RecognizeServicer):
    def __init__(self, engine: Engine, config: AsrConfig, scheduler: DecodeScheduler) -> None:
        self._engine, self._config, self._scheduler = engine, config, scheduler
        self._admission = Admission(config.max_sessions, config.queue, config.queue_timeout_ms / 1000)
        self._labels = {"engine": engine.name, "model": engine.model}
        metrics.ASR_QUEUE_DEPTH.labels(**self._labels).set_function(lambda: scheduler.depth)
        metrics.init_labels(engine.name, engine.model)

    async def Stream(
        self, request_iterator: AsyncIterator[asr_pb2.ClientFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asr_pb2.AsrEvent]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "start":
            yield _error_event("", "no_start", "first frame must be Start")
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "first frame must be Start")
        assert first is not None
        try:
            params = StreamParams.from_start(first.start, self._config)
        except SessionError as exc:
            yield _error_event(first.start.flow_id, exc.code, str(exc))
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{exc.code}: {exc}")
        extra = {
            "flowId": params.flow_id,
            "model": self._engine.model,
            "lang": params.lang,
            "asr_link_codec": params.codec,
        }
        queued = metrics.ASR_QUEUED.labels(**self._labels)
        queued.inc()
        waiting = True
        try:
            async with self._admission.slot():
                queued.dec()
                waiting = False
                log.info("stream open", extra={**extra, "event": "stream_open"})
                if params.hotwords and not self._engine.supports_hotwords:
                    # The gateway's `ack` says so only if the routing file marks this pool `hotwords = false`.
                    log.warning("hotwords ignored by this engine", extra={**extra, "event": "hotwords_ignored"})
                # Admitted: say so at once, so the client knows this member took the stream and
                # can start sending audio (a queued stream waits here without answering).
                yield asr_pb2.AsrEvent(type="ready", flow_id=params.flow_id, model=self._engine.model)
                async for event in self._serve(params, request_iterator, context):
                    yield event
        except Busy as exc:
            metrics.ASR_REFUSED.labels(**self._labels).inc()
            log.warning("stream refused", extra={**extra, "err_code": "busy"})
            # The event too: a client still writing may see INTERNAL instead of the status
            # (grpc/grpc#36066), the event tells it the real reason.
            yield _error_event(params.flow_id, "busy", f"ASR busy: {exc}", self._engine.model)
            await self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"ASR busy: {exc}")
        finally:
            if waiting:
                queued.dec()

    async def _serve(
        self,
        params: StreamParams,
        frames: AsyncIterator[asr_pb2.ClientFrame],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[asr_pb2.AsrEvent]:
        inflight = metrics.ASR_INFLIGHT.labels(**self._labels)
        inflight.inc()
        out: asyncio.Queue[asr_pb2.AsrEvent | None] = asyncio.Queue()
        session = AsrSession(params, self._engine, self._scheduler, self._config)

        async def run() -> None:
            try:
                await session.run(frames, out.put)
            finally:
                out.put_nowait(None)

        task = asyncio.create_task(run())
        try:
            while (event := await out.get()) is not None:
                yield event
            await task  # re-raises the session's error
        except SessionError as exc:
            extra = {"flowId": params.flow_id, "model": self._engine.model, "err_code": exc.code}
            log.warning("stream rejected: %s", exc, extra=extra)
            yield _error_event(params.flow_id, exc.code, str(exc), self._engine.model)
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{exc.code}: {exc}")
        finally:
            inflight.dec()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            extra = {
                "flowId": params.flow_id,
                "model": self._engine.model,
                "lang": params.lang,
                "asr_link_codec": params.codec,
                "event": "stream_closed",
            }
            log.info("stream closed %s", session.summary(), extra=extra)

    async def _abort(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
        metrics.ASR_STREAM_ERRORS.labels(code=code.name).inc()
        await context.abort(code, message)


def _error_event(flow_id: str, code: str, message: str, model: str = "") -> asr_pb2.AsrEvent:
    return asr_pb2.AsrEvent(type="error", flow_id=flow_id, code=code, text=message, model=model)
