"""Compress service: `compress.v1.Compress/Archive` (SPEC §3, §4) and the HTTP route of the local store.

The gRPC layer is thin: `ArchivePipeline.archive` does the work and raises `InvalidFrame` for bad input.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass

import grpc
from aiohttp import web
from prometheus_client import Counter, Histogram

from proto import common_pb2, compress_pb2, compress_pb2_grpc
from services.compress.config import CompressConfig
from services.compress.session import (
    CONTENT_TYPES,
    EXTENSIONS,
    ArchiveSession,
    InvalidFrame,
    SessionLimits,
    archive_name,
    name_of_key,
    record_key,
)
from services.compress.spool import ArchiveWriter, PendingSpool
from services.compress.store import LocalStore, Store
from services.compress.uploader import Uploader

TENANT_METADATA = "speechgw-tenant-bin"  # set by the gateway's archive stage (orchestrator/stages/compress.py)

log = logging.getLogger(__name__)

LATENCY_MS = Histogram(
    "compress_latency_ms",
    "End of stream to ArchiveResult, milliseconds",
    buckets=(5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000),
)
ARCHIVES = Counter("compress_archives_total", "Archive calls answered, by status", ["status"])
INVALID = Counter("compress_invalid_streams_total", "Archive calls refused with INVALID_ARGUMENT")
AUDIO_S = Counter("compress_audio_seconds_total", "Audio archived, seconds")
for _status in ("stored", "spooled"):
    ARCHIVES.labels(_status)  # exported from the start, at 0


@dataclass(frozen=True)
class ArchiveOutcome:
    flow_id: str
    key: str
    record_url: str
    bytes: int
    duration_s: float
    codec: str
    status: str
    latency_ms: float  # end of stream -> outcome


class ArchivePipeline:
    """One flow: validate frames, encode them into the spool as they arrive, finish the archive at end of
    stream (half-close or last=true) and hand it to the uploader."""

    def __init__(
        self, cfg: CompressConfig, store: Store, spool: PendingSpool, uploader: Uploader, executor: Executor
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.uploader = uploader
        self.executor = executor
        self.limits = SessionLimits(sample_rate_hz=cfg.sample_rate_hz, max_flow_s=cfg.max_flow_s)

    async def archive(self, frames: AsyncIterator[common_pb2.AudioFrame], tenant: str = "") -> ArchiveOutcome:
        """Archive one flow of `tenant` (its owner; "" = none) under the tenant's own key."""
        loop = asyncio.get_running_loop()
        session = ArchiveSession(self.limits)
        writer: ArchiveWriter | None = None
        try:
            async for frame in frames:
                pcm = session.accept(frame)
                if writer is None:
                    part = await loop.run_in_executor(
                        self.executor,
                        self.spool.new_archive_path,
                        archive_name(session.flow_id, tenant),
                        EXTENSIONS[self.cfg.format],
                    )
                    writer = ArchiveWriter(
                        part,
                        self.cfg.format,
                        self.cfg.sample_rate_hz,
                        self.cfg.compression_level,
                        self.cfg.spool_flush_bytes,
                        self.executor,
                    )
                await writer.append(pcm)
                if session.finished:
                    break
            session.close()
            assert writer is not None
            ended = time.perf_counter()  # SPEC §7 compress_latency_ms: end of stream -> answer
            encoded = await writer.finish()
            await loop.run_in_executor(self.executor, self.spool.publish, writer.part)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        status = await self.uploader.commit(archive_name(session.flow_id, tenant))
        key = record_key(session.flow_id, self.cfg.format, tenant)
        url = await loop.run_in_executor(self.executor, self.store.url, key)
        latency_ms = (time.perf_counter() - ended) * 1000
        LATENCY_MS.observe(latency_ms)
        ARCHIVES.labels(status).inc()
        AUDIO_S.inc(encoded.duration_s)
        return ArchiveOutcome(
            session.flow_id, key, url, encoded.bytes, encoded.duration_s, encoded.codec, status, latency_ms
        )


class CompressServicer(compress_pb2_grpc.CompressServicer):
    """Translates the wire to the pipeline: InvalidFrame -> INVALID_ARGUMENT, anything else -> INTERNAL."""

    def __init__(self, pipeline: ArchivePipeline) -> None:
        self.pipeline = pipeline

    async def Archive(
        self, request_iterator: AsyncIterator[common_pb2.AudioFrame], context: grpc.aio.ServicerContext
    ) -> compress_pb2.ArchiveResult:
        try:
            out = await self.pipeline.archive(request_iterator, tenant_of(context))
        except InvalidFrame as exc:
            INVALID.inc()
            log.info(
                "invalid stream",
                extra={"stage": "compress", "err_code": "invalid_argument", "event": str(exc)},
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:  # disk full, encoder or signing failure: this call only
            log.exception("archive failed", extra={"stage": "compress", "err_code": "internal"})
            await context.abort(grpc.StatusCode.INTERNAL, f"archive failed: {type(exc).__name__}: {exc}")
        log.info(
            "archived",
            extra={
                "flowId": out.flow_id,
                "stage": "compress",
                "bytes_out": out.bytes,
                "latency_ms": round(out.latency_ms, 1),
                "event": out.status,
                "model": out.codec,
            },
        )
        return compress_pb2.ArchiveResult(
            flow_id=out.flow_id,
            record_url=out.record_url,
            key=out.key,
            bytes=out.bytes,
            duration_s=out.duration_s,
            codec=out.codec,
            status=out.status,
        )


def tenant_of(context: grpc.aio.ServicerContext) -> str:
    """The flow's owner, from the call's binary metadata (the gateway sets it); "" when absent."""
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA:
            try:
                return value.decode() if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError:
                raise InvalidFrame("tenant metadata is not UTF-8") from None
    return ""


def record_routes(store: LocalStore) -> list[web.RouteDef]:
    """GET (and HEAD) /records/{namespace}/{file}: serves the local store to signed, unexpired URLs only
    (docs/storage.md). Every refusal is a bare 403 or 404 that names no path."""
    signer = store.signer
    assert signer is not None, "the local store's HTTP route needs a URL signer"

    async def get_record(request: web.Request) -> web.StreamResponse:
        # The signature covers the path as the client sent it (still percent-encoded): any other
        # spelling of the same file is another path, and its signature does not match.
        raw_path = request.raw_path.split("?", 1)[0]
        if not signer.valid(raw_path, request.query.get("exp"), request.query.get("sig")):
            raise web.HTTPForbidden(text="forbidden\n")
        key = raw_path.lstrip("/")
        if name_of_key(key) is None:
            raise web.HTTPNotFound(text="not found\n")
        try:
            path = store.path_of(key)
        except ValueError:
            raise web.HTTPNotFound(text="not found\n") from None
        if not path.is_file():
            raise web.HTTPNotFound(text="not found\n")
        return web.FileResponse(path, headers={"Content-Type": CONTENT_TYPES[path.suffix.lstrip(".")]})

    return [web.get("/records/{namespace}/{file}", get_record)]
