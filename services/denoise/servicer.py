"""Thin gRPC adapter of `denoise.v1.Denoise/Stream` over the sans-I/O `DenoiseSession` (SPEC §3,
STYLE §2). Engines run in an executor (STYLE §7); a call awaits each message before reading the next,
so every flow's frames are processed in order. Bad input ends only its own call."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import NoReturn

import grpc
from prometheus_client import Counter, Gauge, Histogram

from proto import common_pb2, denoise_pb2_grpc
from services.denoise.core import DenoiseSession, FrameIn, FrameOut, InvalidAudio, TooManyFlows
from services.denoise.engines import Engine

log = logging.getLogger("services.denoise")

# SPEC §7 name; per input message: engine time including the wait for an executor thread.
DN_LATENCY_MS = Histogram(
    "dn_latency_ms",
    "Denoise processing time per input message (ms)",
    ["engine"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000),
)
DN_ACTIVE = Gauge("dn_active_streams", "Open denoise.v1.Denoise/Stream calls")
DN_REJECTED = Counter("dn_rejected_total", "Denoise calls ended by bad input or limits", ["code"])
for _code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "INTERNAL"):
    DN_REJECTED.labels(_code)  # exported from the start, at 0


class EnginePool:
    """Reset engines kept for reuse (creating a GTCRN session costs tens of ms). Thread-safe."""

    def __init__(self, factory: Callable[[], Engine], max_idle: int) -> None:
        self._factory = factory
        self._max_idle = max_idle
        self._idle: list[Engine] = []
        self._lock = threading.Lock()

    def acquire(self) -> Engine:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._factory()

    def release(self, engine: Engine) -> None:
        """Take back an engine whose flow ended cleanly (flushed, hence reset)."""
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(engine)


def frame_in(msg: common_pb2.AudioFrame) -> FrameIn:
    return FrameIn(msg.flow_id, msg.seq, msg.sr, msg.channels, msg.pts, msg.pcm, msg.last)


def frame_out(out: FrameOut) -> common_pb2.AudioFrame:
    return common_pb2.AudioFrame(
        flow_id=out.flow_id,
        seq=out.seq,
        sr=16_000,
        channels=1,
        ns=out.ns,
        pts=out.pts_ns,
        pcm=out.pcm,
        last=out.last,
    )


class DenoiseServicer(denoise_pb2_grpc.DenoiseServicer):
    def __init__(
        self,
        pool: EnginePool,
        executor: Executor,
        engine_name: str,
        frame_samples: int,
        max_streams: int,
        max_flows_per_stream: int,
    ) -> None:
        self._pool = pool
        self._executor = executor
        self._engine_name = engine_name
        self._frame_samples = frame_samples
        self._max_streams = max_streams
        self._max_flows = max_flows_per_stream
        self._streams = 0
        self._latency = DN_LATENCY_MS.labels(engine=engine_name)

    async def Stream(
        self, request_iterator: AsyncIterator[common_pb2.AudioFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.AudioFrame]:
        if self._streams >= self._max_streams:
            DN_REJECTED.labels(code="RESOURCE_EXHAUSTED").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"denoise is at its limit of {self._max_streams} streams"
            )
        self._streams += 1
        DN_ACTIVE.inc()
        # Engines of flows cut short (error, cancel) are not released: an executor thread may still
        # be running them; they are simply dropped.
        session = DenoiseSession(self._pool.acquire, self._pool.release, self._frame_samples, self._max_flows)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            async for msg in request_iterator:
                frame = frame_in(msg)
                try:
                    session.check(frame)
                except InvalidAudio as exc:
                    await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), frame)
                except TooManyFlows as exc:
                    await self._reject(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), frame)
                t0 = time.perf_counter()
                try:
                    outs = await loop.run_in_executor(self._executor, session.process, frame)
                except Exception as exc:  # an engine failure ends this call only
                    log.exception("denoise failed", extra={"flowId": frame.flow_id, "stage": "denoise"})
                    await self._reject(context, grpc.StatusCode.INTERNAL, f"denoise failed: {exc}", frame)
                self._latency.observe((time.perf_counter() - t0) * 1000.0)
                for out in outs:
                    yield self._note(out)
            # Half-close: every open flow is flushed as if it had sent `last` (SPEC §1 flush).
            for out in await loop.run_in_executor(self._executor, session.finish_all):
                yield self._note(out)
        finally:
            self._streams -= 1
            DN_ACTIVE.dec()
            log.info(
                "call end",
                extra={
                    "stage": "denoise",
                    "model": self._engine_name,
                    "event": "call_end",
                    "bytes_in": 2 * session.samples_in,
                    "bytes_out": 2 * session.samples_out,
                    "latency_ms": round((time.perf_counter() - started) * 1000.0, 1),
                },
            )

    def _note(self, out: FrameOut) -> common_pb2.AudioFrame:
        if out.last:
            log.info(
                "flow end",
                extra={
                    "flowId": out.flow_id,
                    "stage": "denoise",
                    "seq": out.seq,
                    "sr": 16_000,
                    "model": self._engine_name,
                    "event": "last",
                },
            )
        return frame_out(out)

    @staticmethod
    async def _reject(
        context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, frame: FrameIn
    ) -> NoReturn:
        DN_REJECTED.labels(code=code.name).inc()
        log.warning(
            "rejected: %s",
            message,
            extra={
                "flowId": frame.flow_id,
                "stage": "denoise",
                "seq": frame.seq,
                "sr": frame.sr,
                "bytes_in": len(frame.pcm),
                "err_code": code.name,
            },
        )
        await context.abort(code, message)
        raise AssertionError("context.abort() returned")
