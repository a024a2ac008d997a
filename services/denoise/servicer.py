"""Thin gRPC adapter of Denoise/Stream (SPEC §3): proto <-> DenoiseStream, engines in an executor."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor

import grpc
from prometheus_client import Counter, Gauge, Histogram

from proto import common_pb2, denoise_pb2_grpc
from services.denoise.core import DenoiseStream, FrameIn, FrameOut, InvalidAudio
from services.denoise.engines import Engine

log = logging.getLogger(__name__)

# SPEC §7 name; per received message: engine time including the wait for an executor thread.
DN_LATENCY_MS = Histogram(
    "dn_latency_ms",
    "Denoise processing time per message (ms)",
    ["engine"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000),
)
DN_ACTIVE = Gauge("dn_active_streams", "Denoise/Stream calls in progress")
DN_REJECTED = Counter("dn_rejected_total", "Denoise calls ended by the service", ["code"])


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
        """Return an engine whose stream finished (flushed, hence reset)."""
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
        self, pool: EnginePool, executor: Executor, engine_name: str, frame_samples: int, max_streams: int
    ) -> None:
        self._pool = pool
        self._executor = executor
        self._engine_name = engine_name
        self._frame_samples = frame_samples
        self._max_streams = max_streams
        self._active = 0
        self._latency = DN_LATENCY_MS.labels(engine=engine_name)

    async def Stream(
        self, request_iterator: AsyncIterator[common_pb2.AudioFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.AudioFrame]:
        if self._active >= self._max_streams:
            DN_REJECTED.labels(code="RESOURCE_EXHAUSTED").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"denoise is at its limit of {self._max_streams} streams"
            )
        self._active += 1
        DN_ACTIVE.inc()
        loop = asyncio.get_running_loop()
        engine = await loop.run_in_executor(self._executor, self._pool.acquire)
        stream = DenoiseStream(engine, self._frame_samples)
        started = time.perf_counter()
        bytes_in = bytes_out = 0
        clean = False
        try:
            async for msg in request_iterator:
                frame = frame_in(msg)
                try:
                    stream.validate(frame)
                except InvalidAudio as exc:
                    DN_REJECTED.labels(code="INVALID_ARGUMENT").inc()
                    log.warning(
                        "invalid frame",
                        extra={
                            "flowId": msg.flow_id,
                            "stage": "denoise",
                            "seq": msg.seq,
                            "sr": msg.sr,
                            "err_code": "INVALID_ARGUMENT",
                        },
                    )
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                bytes_in += len(frame.pcm)
                t0 = time.perf_counter()
                outs = await loop.run_in_executor(self._executor, stream.push, frame)
                self._latency.observe((time.perf_counter() - t0) * 1000.0)
                for out in outs:
                    bytes_out += len(out.pcm)
                    yield frame_out(out)
                if frame.last:
                    break
            # last=true or half-close: drain the engine and close the timeline (SPEC §1 flush).
            for out in await loop.run_in_executor(self._executor, stream.finish):
                bytes_out += len(out.pcm)
                yield frame_out(out)
            clean = True
        finally:
            self._active -= 1
            DN_ACTIVE.dec()
            if clean:  # an engine interrupted mid-call may still be in use by an executor thread
                self._pool.release(engine)
            log.info(
                "stream end",
                extra={
                    "flowId": stream.flow_id,
                    "stage": "denoise",
                    "sr": 16_000,
                    "model": self._engine_name,
                    "ns": stream.samples_out * 1_000_000_000 // 16_000,
                    "bytes_in": bytes_in,
                    "bytes_out": bytes_out,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    "event": "stream_end" if clean else "stream_aborted",
                },
            )
