"""`python -m services.lid`: load Whisper base, warm it up, serve lid.v1.Lid (SPEC §3, §4)."""

from __future__ import annotations

import asyncio
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from common.envconf import ConfigError, current_env
from common.logs import setup_logging
from common.models import ModelMissing, whisper_base_dir
from common.server import ServerConfig, ServiceRunner, run_main, run_until_signalled
from proto import lid_pb2_grpc
from services.lid.config import LidConfig
from services.lid.engine import LanguageDetector, WhisperLid
from services.lid.servicer import LidServicer

log = logging.getLogger("services.lid")


async def serve(config: LidConfig, server_config: ServerConfig, detector: LanguageDetector) -> None:
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="lid")

    def add(server: grpc.aio.Server) -> None:
        lid_pb2_grpc.add_LidServicer_to_server(LidServicer(config, executor, detector), server)

    async def warmup() -> None:
        # A real inference before SERVING, off the loop (STYLE §7); it also checks LID_LANGS.
        await asyncio.get_running_loop().run_in_executor(executor, detector.check_langs)

    try:
        await run_until_signalled(ServiceRunner("lid", server_config, add), warmup)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


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
    except (RuntimeError, ValueError) as exc:
        log.error(
            f"LID model unusable: {exc}",
            extra={"stage": "lid", "model": str(model_dir), "err_code": "model_load_failed"},
        )
        return 3
    log.info("model loaded", extra={"stage": "lid", "model": engine.name})
    run_main(lambda: serve(config, server_config, LanguageDetector(engine, config.langs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
