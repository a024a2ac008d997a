"""`python -m services.compress`: the Compress service process (SPEC §3, §4)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from common.server import ServiceRunner
from common.service import Service, grpc_main
from proto import compress_pb2_grpc
from services.compress.config import CompressConfig
from services.compress.encoder import audio_duration_s, encode_pcm_file
from services.compress.service import ArchivePipeline, CompressServicer, record_routes
from services.compress.signing import UrlSigner
from services.compress.spool import PendingSpool
from services.compress.store import LocalStore, S3Store, Store, StoreUnavailable
from services.compress.uploader import RECOVERED, Uploader

log = logging.getLogger("services.compress")


def warm_encoder(cfg: CompressConfig) -> float:
    """Encode and decode half a second of a 440 Hz tone with the configured codec (blocking)."""
    with tempfile.TemporaryDirectory(prefix="compress-warmup-") as tmp:
        pcm = Path(tmp) / "tone.pcm"
        t = np.arange(cfg.sample_rate_hz // 2) / cfg.sample_rate_hz
        pcm.write_bytes((np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes())
        out = encode_pcm_file(pcm, Path(tmp) / "tone.out", cfg.format, cfg.sample_rate_hz, cfg.compression_level)
        return audio_duration_s(out.path)


def url_signer(cfg: CompressConfig) -> UrlSigner:
    if cfg.record_url_key:
        return UrlSigner(cfg.record_url_key.encode(), cfg.record_url_ttl_s)
    log.warning(
        "RECORD_URL_KEY is not set: record URLs are signed with a random key and stop working on restart",
        extra={"stage": "compress", "event": "record_url_key_random"},
    )
    return UrlSigner(secrets.token_bytes(32), cfg.record_url_ttl_s)


@asynccontextmanager
async def compress_service(cfg: CompressConfig) -> AsyncIterator[Service]:
    executor = ThreadPoolExecutor(max_workers=cfg.encode_workers, thread_name_prefix="compress")
    local: LocalStore | None = None
    store: Store
    if cfg.backend == "s3":
        # This process's internal identity is its client certificate towards an S3 endpoint that wants one.
        store = S3Store(cfg.s3, cfg.public_base, (cfg.tls.cert_file, cfg.tls.key_file) if cfg.tls.enabled else None)
    else:
        store = local = LocalStore(cfg.store_dir, cfg.public_base, url_signer(cfg))
    spool = PendingSpool(cfg.spool_dir)
    uploader = Uploader(store, spool, executor, cfg.retry_base_s, cfg.retry_max_s)
    pipeline = ArchivePipeline(cfg, store, spool, uploader, executor)
    tasks: list[asyncio.Task[None]] = []

    async def warmup(runner: ServiceRunner) -> None:
        loop = asyncio.get_running_loop()
        if local is not None and not local.public_base:
            host = socket.getfqdn() if cfg.server.host in ("0.0.0.0", "::", "") else cfg.server.host
            scheme = "https" if cfg.tls.enabled else "http"
            local.public_base = f"{scheme}://{host}:{runner.http_port}"
            log.warning(
                "PUBLIC_BASE is not set: record URLs use %s; production must set PUBLIC_BASE",
                local.public_base,
                extra={"stage": "compress", "event": "public_base_default"},
            )
        for part in await loop.run_in_executor(executor, spool.prepare):
            # A flow cut by a kill: keep what it holds; the uploader's first pass stores it (docs/storage.md).
            got = await loop.run_in_executor(executor, spool.recover, part, cfg.sample_rate_hz, cfg.compression_level)
            RECOVERED.labels("archived" if got is not None else "unreadable").inc()
            log.warning(
                "recovered an archive cut by a restart" if got is not None else "dropped an unreadable spool file",
                extra={
                    "flowId": part.parent.name,
                    "stage": "compress",
                    "event": "spool_recovered" if got is not None else "spool_unreadable",
                    "bytes_out": got.bytes if got is not None else 0,
                },
            )
        try:
            await loop.run_in_executor(executor, store.ensure_ready)
        except StoreUnavailable as exc:  # degrade: archives spool until the store is back (SPEC §4)
            uploader.store_down = True
            log.warning(
                "store unavailable at start: %s",
                exc,
                extra={"stage": "compress", "err_code": "store_unavailable"},
            )
        duration_s = await loop.run_in_executor(executor, warm_encoder, cfg)
        log.info("encoder warm", extra={"stage": "compress", "model": cfg.format, "event": f"{duration_s:.3f}s"})
        tasks.append(asyncio.create_task(uploader.run(), name="compress-uploader"))

    try:
        yield Service(
            lambda server: compress_pb2_grpc.add_CompressServicer_to_server(CompressServicer(pipeline), server),
            warmup,
            record_routes(local) if local is not None else None,
        )
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        executor.shutdown(wait=True)


if __name__ == "__main__":
    grpc_main("compress", CompressConfig, compress_service)
