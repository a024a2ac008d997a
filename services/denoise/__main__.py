"""`python -m services.denoise`: the Denoise gRPC service (SPEC §3, §4)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import grpc
import numpy as np

from common.server import ServiceRunner
from common.service import Service, StartupError, grpc_main
from proto import denoise_pb2_grpc
from services.denoise.config import DenoiseConfig
from services.denoise.engines import SAMPLE_RATE, EngineUnavailable, make_engine, probe_gtcrn
from services.denoise.prepare import ensure_gtcrn_onnx
from services.denoise.servicer import DenoiseServicer, EnginePool

log = logging.getLogger("services.denoise")


def _warm_up(pool: EnginePool) -> float:
    """Run one second of noise through an engine and flush it; returns the time taken (ms)."""
    t0 = time.perf_counter()
    engine = pool.acquire()
    noise = np.random.default_rng(0).normal(0.0, 0.05, SAMPLE_RATE).astype(np.float32)
    got = sum(engine.process(noise[i : i + 320]).size for i in range(0, noise.size, 320))
    got += engine.flush().size
    if got < noise.size:
        raise RuntimeError(f"warm-up: engine returned {got} samples for {noise.size}")
    pool.release(engine)
    return (time.perf_counter() - t0) * 1000.0


@asynccontextmanager
async def denoise_service(config: DenoiseConfig) -> AsyncIterator[Service]:
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(config.workers, thread_name_prefix="denoise")
    try:
        model: Path | None = None
        if config.engine == "gtcrn":
            model = (
                Path(config.gtcrn_model)
                if config.gtcrn_model
                else await loop.run_in_executor(executor, ensure_gtcrn_onnx)
            )
            try:
                await loop.run_in_executor(executor, probe_gtcrn, model, config.probe_timeout_s)
            except EngineUnavailable as exc:
                raise StartupError(str(exc), "engine_unavailable") from None
        factory = partial(make_engine, config.engine, model, config.num_threads, config.rnnoise_resample_quality)
        pool = EnginePool(factory, config.idle_engines)
        servicer = DenoiseServicer(
            pool, executor, config.engine, config.frame_samples, config.max_streams, config.max_flows_per_stream
        )

        def add(server: grpc.aio.Server) -> None:
            denoise_pb2_grpc.add_DenoiseServicer_to_server(servicer, server)

        async def warmup(runner: ServiceRunner) -> None:
            try:
                took_ms = await loop.run_in_executor(executor, _warm_up, pool)
            except EngineUnavailable as exc:
                raise StartupError(str(exc), "engine_unavailable") from None
            log.info(
                "warmed up",
                extra={"stage": "denoise", "model": config.engine, "latency_ms": round(took_ms, 1), "event": "warmup"},
            )

        yield Service(add, warmup)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


if __name__ == "__main__":
    grpc_main("denoise", DenoiseConfig, denoise_service)
