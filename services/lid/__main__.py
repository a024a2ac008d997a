"""`python -m services.lid`: load Whisper base, warm it up, serve lid.v1.Lid (SPEC §3, §4)."""

from __future__ import annotations

import asyncio
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from common.envconf import ConfigError, current_env
from common.logs import setup_logging
from common.models import ModelMissing, whisper_base_dir
from common.server import ServerConfig, ServiceRunner, run_main, run_until_signalled
from proto import lid_pb2_grpc
from services.lid.config import LidConfig
from services.lid.engine import LanguageDetector, WhisperLid
from services.lid.servicer import LidServicer
from services.lid.speech import WINDOW_SAMPLES, SileroSpeech, silero_session

log = logging.getLogger("services.lid")


async def serve(config: LidConfig, server_config: ServerConfig, detector: LanguageDetector, vad_session: Any) -> None:
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="lid")
    # Speech detection of every call's frames: ~2 ms per second of audio, one thread is plenty.
    vad_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lid-vad")

    def add(server: grpc.aio.Server) -> None:
        servicer = LidServicer(config, executor, detector, vad_executor, lambda: SileroSpeech(vad_session))
        lid_pb2_grpc.add_LidServicer_to_server(servicer, server)

    async def warmup() -> None:
        # Real inferences before SERVING, off the loop (STYLE §7); the first also checks LID_LANGS.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, detector.check_langs)
        await loop.run_in_executor(vad_executor, SileroSpeech(vad_session), bytes(2 * WINDOW_SAMPLES * 4))

    try:
        await run_until_signalled(ServiceRunner("lid", server_config, add), warmup)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        vad_executor.shutdown(wait=False, cancel_futures=True)


def main() -> int:
    env = current_env()
    setup_logging(env.get("LOG_LEVEL", "INFO"))
    try:
        config = LidConfig.from_env(env)
        server_config = ServerConfig.from_env(env, "LID")
        model_dir = Path(config.model_dir) if config.model_dir else whisper_base_dir()
    except (ConfigError, ModelMissing) as exc:
        log.error(f"cannot start: {exc}", extra={"stage": "lid", "err_code": "config_invalid"})
        return 2
    try:
        engine = WhisperLid(model_dir, config.cpu_threads, config.workers, config.window_s)
        vad_session = silero_session()
    except (RuntimeError, ValueError) as exc:
        log.error(
            f"LID model unusable: {exc}",
            extra={"stage": "lid", "model": str(model_dir), "err_code": "model_load_failed"},
        )
        return 3
    log.info("model loaded", extra={"stage": "lid", "model": engine.name})
    run_main(lambda: serve(config, server_config, LanguageDetector(engine, config.langs), vad_session))
    return 0


if __name__ == "__main__":
    sys.exit(main())
