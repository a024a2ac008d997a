"""`python -m services.lid`: load Whisper base and the Silero VAD, warm them up, serve lid.v1.Lid (SPEC §3, §4)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from common.envconf import ConfigError
from common.models import whisper_base_dir
from common.server import ServiceRunner
from common.service import Service, StartupError, grpc_main
from proto import lid_pb2_grpc
from services.lid.config import LidConfig
from services.lid.engine import LanguageDetector, WhisperLid
from services.lid.servicer import LidServicer
from services.lid.speech import WINDOW_SAMPLES, SileroSpeech, silero_session

log = logging.getLogger("services.lid")


def load_engine(config: LidConfig) -> WhisperLid:
    """Load the CTranslate2 model (blocking); a model that does not load cannot start the service."""
    model_dir = Path(config.model_dir) if config.model_dir else whisper_base_dir()
    try:
        return WhisperLid(model_dir, config.cpu_threads, config.workers, config.window_s)
    except (RuntimeError, ValueError) as exc:
        raise StartupError(f"LID model {model_dir} unusable: {exc}", "model_load_failed") from None


@asynccontextmanager
async def lid_service(config: LidConfig) -> AsyncIterator[Service]:
    loop = asyncio.get_running_loop()
    engine = await loop.run_in_executor(None, load_engine, config)
    log.info("model loaded", extra={"stage": "lid", "model": engine.name})
    detector = LanguageDetector(engine, config.langs)
    vad_session = await loop.run_in_executor(None, silero_session)
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="lid")
    # Speech detection of every call's frames: ~2 ms per second of audio, one thread is plenty.
    vad_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lid-vad")

    def add(server: grpc.aio.Server) -> None:
        servicer = LidServicer(config, executor, detector, vad_executor, lambda: SileroSpeech(vad_session))
        lid_pb2_grpc.add_LidServicer_to_server(servicer, server)

    async def warmup(runner: ServiceRunner) -> None:
        # Real inferences before SERVING, off the loop (STYLE §7); the first also checks LID_LANGS.
        try:
            await loop.run_in_executor(executor, detector.check_langs)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        await loop.run_in_executor(vad_executor, SileroSpeech(vad_session), bytes(2 * WINDOW_SAMPLES * 4))

    try:
        yield Service(add, warmup)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        vad_executor.shutdown(wait=False, cancel_futures=True)


if __name__ == "__main__":
    grpc_main("lid", LidConfig, lid_service)
