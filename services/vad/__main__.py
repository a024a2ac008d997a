"""`python -m services.vad`: probe the model in a child process, then serve vad.v1.Vad (SPEC §3)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import grpc

from common.server import ServiceRunner
from common.service import Service, StartupError, grpc_main
from proto import vad_pb2_grpc
from services.vad.config import VadConfig
from services.vad.detector import DetectorPool, exercise, make_detector, probe_in_child
from services.vad.servicer import VadServicer

log = logging.getLogger("services.vad")


@asynccontextmanager
async def vad_service(config: VadConfig) -> AsyncIterator[Service]:
    """A model that crashes onnxruntime must not take this process with it: probe it in a child."""
    loop = asyncio.get_running_loop()
    model = config.model_path or "silero-vad wheel: silero_vad/data/silero_vad.onnx"
    probe = await loop.run_in_executor(None, probe_in_child, dict(os.environ))
    if not probe.ok:
        raise StartupError(f"VAD model unusable ({model}): {probe.detail}", "model_probe_failed")
    log.info("model probe ok", extra={"stage": "vad", "model": model})
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="vad")
    detectors = DetectorPool(make_detector, config.pool_size)

    def add(server: grpc.aio.Server) -> None:
        vad_pb2_grpc.add_VadServicer_to_server(VadServicer(config, executor, detectors), server)

    async def warmup(runner: ServiceRunner) -> None:
        # A real detector runs a second of audio before SERVING, off the loop (STYLE §7).
        # A real detector runs a second of audio before SERVING, off the loop (STYLE §7), and is
        # the pool's first.
        def warm() -> None:
            detector = detectors.take(config)
            exercise(detector, config)
            detectors.give(config, detector)

        await loop.run_in_executor(executor, warm)

    try:
        yield Service(add, warmup)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


if __name__ == "__main__":
    grpc_main("vad", VadConfig, vad_service)
