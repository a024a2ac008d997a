"""`python -m services.asr`: one ASR process serving one engine (SPEC §4)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np

from common.server import ServiceRunner
from common.service import Service, grpc_main
from proto import asr_pb2_grpc
from services.asr.config import AsrConfig
from services.asr.engines import Engine, build_engine
from services.asr.scheduler import DecodeScheduler
from services.asr.servicer import RecognizeServicer

log = logging.getLogger("services.asr")


def warmup_clip(sample_rate: int = 16_000) -> np.ndarray:
    """0.3 s silence, 0.7 s of a voiced-like tone complex, 0.3 s silence."""
    t = np.arange(int(0.7 * sample_rate)) / sample_rate
    voiced = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 700, 1200), 1))
    gap = np.zeros(int(0.3 * sample_rate))
    return (0.2 * np.concatenate([gap, voiced * np.hanning(t.size), gap])).astype(np.float32)


def warm(engine: Engine) -> float:
    """Decode the warm-up clip whole and as a stream; return the seconds it took."""
    t0 = time.perf_counter()
    clip = warmup_clip()
    engine.transcribe(clip)
    stream = engine.open_stream()
    stream.accept(clip[: clip.size // 2])
    stream.partial()
    stream.accept(clip[clip.size // 2 :])
    stream.finish()
    return time.perf_counter() - t0


@asynccontextmanager
async def asr_service(config: AsrConfig) -> AsyncIterator[Service]:
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # one INFO line per decode
    loop = asyncio.get_running_loop()
    engine = await loop.run_in_executor(None, build_engine, config)
    scheduler = DecodeScheduler(config.decode_workers, config.batch_max, config.partial_duty)
    servicer = RecognizeServicer(engine, config, scheduler)

    async def warmup(runner: ServiceRunner) -> None:
        took = await loop.run_in_executor(None, warm, engine)
        log.info(
            "warm",
            extra={
                "stage": "asr",
                "model": engine.model,
                "lang": config.lang,
                "latency_ms": round(took * 1000, 1),
                "event": "warm",
            },
        )

    try:
        yield Service(lambda server: asr_pb2_grpc.add_RecognizeServicer_to_server(servicer, server), warmup)
    finally:
        scheduler.shutdown()


if __name__ == "__main__":
    grpc_main("asr", AsrConfig, asr_service)
