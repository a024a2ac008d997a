"""Thin gRPC adapter of `vad.v1.Vad/Stream` over the sans-I/O `VadSession` (SPEC §3, STYLE §2).

Inference runs in an executor (STYLE §7); one call awaits each message before reading the next,
so every flow's frames are processed in order. Bad input ends only its own call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from functools import partial

import grpc
from prometheus_client import Counter, Gauge, Histogram

from proto import common_pb2, vad_pb2_grpc
from services.vad.config import VadConfig
from services.vad.core import SPEECH_END, SPEECH_START, InvalidFrame, TooManyFlows, VadSession, call_config
from services.vad.detector import DetectorPool

log = logging.getLogger("services.vad")

# SPEC §7 names `vad_latency_ms`; the others are this service's own.
LATENCY_MS = Histogram(
    "vad_latency_ms",
    "VAD processing time per input message (ms)",
    buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 250),
)
ACTIVE_STREAMS = Gauge("vad_active_streams", "Open vad.v1.Vad/Stream calls")
ACTIVE_FLOWS = Gauge("vad_active_flows", "Flows with live detector state")
SEGMENTS = Counter("vad_segments_total", "Speech segments closed (SPEECH_END emitted)")
REJECTED = Counter("vad_rejected_total", "Calls ended by bad input or limits", ["code"])
for _code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "INTERNAL"):
    REJECTED.labels(_code)  # exported from the start, at 0


class VadServicer(vad_pb2_grpc.VadServicer):
    def __init__(self, config: VadConfig, executor: Executor, detectors: DetectorPool) -> None:
        self._config = config
        self._executor = executor
        self._detectors = detectors
        self._streams = 0

    async def Stream(
        self, request_iterator: AsyncIterator[common_pb2.AudioFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.AudioFrame]:
        if self._streams >= self._config.max_streams:
            REJECTED.labels("RESOURCE_EXHAUSTED").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"VAD is at its limit of {self._config.max_streams} streams",
            )
        try:
            config = call_config(self._config, context.invocation_metadata() or ())
        except InvalidFrame as exc:
            REJECTED.labels("INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._streams += 1
        ACTIVE_STREAMS.inc()
        # A flow that ends (last, half-close) gives its detector back from the executor thread that
        # used it last; a call cut short drops its detectors, which a cancelled executor job may
        # still be using.
        session = VadSession(config, partial(self._detectors.take, config), partial(self._detectors.give, config))
        loop = asyncio.get_running_loop()
        flows = 0
        try:
            async for frame in request_iterator:
                try:
                    out = await loop.run_in_executor(self._executor, self._timed, session, frame)
                except InvalidFrame as exc:
                    await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), frame)
                except TooManyFlows as exc:
                    await self._reject(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), frame)
                except Exception as exc:  # a detector failure ends this call only
                    log.exception("vad failed", extra={"flowId": frame.flow_id, "stage": "vad"})
                    await self._reject(context, grpc.StatusCode.INTERNAL, f"VAD failed: {exc}", frame)
                flows = self._track_flows(flows, len(session.flows))
                for reply in out:
                    self._note(reply)
                    yield reply
            for reply in await loop.run_in_executor(self._executor, session.finish_all):
                self._note(reply)
                yield reply
        finally:
            self._track_flows(flows, 0)
            self._streams -= 1
            ACTIVE_STREAMS.dec()

    @staticmethod
    def _timed(session: VadSession, frame: common_pb2.AudioFrame) -> list[common_pb2.AudioFrame]:
        t0 = time.perf_counter()
        out = session.process(frame)
        LATENCY_MS.observe((time.perf_counter() - t0) * 1000)
        return out

    @staticmethod
    def _track_flows(before: int, now: int) -> int:
        ACTIVE_FLOWS.inc(now - before)
        return now

    @staticmethod
    def _note(reply: common_pb2.AudioFrame) -> None:
        if reply.activity == SPEECH_END:
            SEGMENTS.inc()
        if reply.activity in (SPEECH_START, SPEECH_END) or reply.last:
            event = "last" if reply.last else common_pb2.Activity.Name(reply.activity).lower()
            log.info(
                f"{event} pts={reply.pts}",
                extra={"flowId": reply.flow_id, "stage": "vad", "seq": reply.seq, "event": event},
            )

    @staticmethod
    async def _reject(
        context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, frame: common_pb2.AudioFrame
    ) -> None:
        REJECTED.labels(code.name).inc()
        log.warning(
            "rejected",
            extra={
                "flowId": frame.flow_id,
                "stage": "vad",
                "seq": frame.seq,
                "sr": frame.sr,
                "bytes_in": len(frame.pcm),
                "err_code": code.name,
            },
        )
        await context.abort(code, message)
