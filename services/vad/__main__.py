"""`python -m services.vad`: probe the model in a child process, then serve vad.v1.Vad (SPEC §3)."""

from __future__ import annotations

import asyncio
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import grpc

from common.envconf import ConfigError, current_env
from common.logs import setup_logging
from common.server import ServerConfig, ServiceRunner, run_main, run_until_signalled
from proto import vad_pb2_grpc
from services.vad.config import VadConfig
from services.vad.detector import exercise, make_detector, probe_in_child

log = logging.getLogger("services.vad")


async def serve(config: VadConfig, server_config: ServerConfig) -> None:
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="vad")
    factory = partial(make_detector, config)

    def add(server: grpc.aio.Server) -> None:
        from services.vad.servicer import VadServicer

        vad_pb2_grpc.add_VadServicer_to_server(VadServicer(config, executor, factory), server)

    async def warmup() -> None:
        # A real detector runs a second of audio before SERVING, off the loop (STYLE §7).
        await asyncio.get_running_loop().run_in_executor(executor, lambda: exercise(factory(), config))

    try:
        await run_until_signalled(ServiceRunner("vad", server_config, add), warmup)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def main() -> int:
    setup_logging()
    env = current_env()
    try:
        config = VadConfig.from_env(env)
        server_config = ServerConfig.from_env(env, "VAD")
    except ConfigError as exc:
        log.error(f"bad configuration: {exc}", extra={"stage": "vad", "err_code": "config_invalid"})
        return 2
    model = config.model_path or "silero-vad wheel: silero_vad/data/silero_vad.onnx"
    probe = probe_in_child(env)
    if not probe.ok:
        log.error(
            f"VAD model unusable: {probe.detail}",
            extra={"stage": "vad", "model": model, "err_code": "model_probe_failed"},
        )
        return 3
    log.info("model probe ok", extra={"stage": "vad", "model": model})
    run_main(lambda: serve(config, server_config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
