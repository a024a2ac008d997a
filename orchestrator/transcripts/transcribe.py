"""Transcribes an archived recording through the ASR cluster: the deferred half of record-only mode
(SPEC §4; issue 4 item 3). Download the archive, decode it to PCM16 16 kHz mono (in an executor),
stream it on `asr.v1.Recognize/Stream` with codec "pcm" as fast as the link takes it, collect finals.

The recording is already stored losslessly enough (Ogg/Opus or FLAC); re-encoding it to Opus for the
link would only cost quality and CPU, so this link carries PCM (`asr_link_codec=pcm` in the log).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import numpy as np

from common.envconf import ConfigError
from common.server import GRPC_OPTIONS
from common.tls import TlsConfig, client_ssl_context, grpc_channel
from orchestrator.stages.words import words_of
from orchestrator.transcripts.store import CapacityUnavailable, PermanentJobError
from proto import asr_pb2, asr_pb2_grpc

log = logging.getLogger(__name__)
from common.audio import SAMPLE_RATE  # noqa: E402


class TranscribeError(RuntimeError):
    """A transient failure (download, ASR busy or down, deadline): the job is retried."""


class AsrUnavailable(TranscribeError, CapacityUnavailable):
    """The ASR is busy (`busy` event, `RESOURCE_EXHAUSTED`) or down (`UNAVAILABLE`), or no pool that
    serves the language has a member now: the job waits without using an attempt."""


class ArchiveUnreachable(TranscribeError, CapacityUnavailable):
    """The archive did not answer (connection refused or reset, HTTP 502/503/504): it is restarting
    or down, and the job waits without using an attempt."""


# The ASR's status codes that mean busy or down, not a verdict on the recording.
_ASR_UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
_ARCHIVE_UNAVAILABLE = (502, 503, 504)


class RecordingUnreadable(PermanentJobError):
    """The archive is not audio soundfile can decode, or the server refuses it for good."""


class AsrRefused(PermanentJobError):
    """The ASR answered INVALID_ARGUMENT or an `error` event: sending it again cannot help."""


@dataclass(frozen=True)
class TranscribeConfig:
    deadline_s: float = 600.0  # the whole call: download, decode and recognition
    download_timeout_s: float = 60.0
    max_download_bytes: int = 512 * 1024 * 1024
    frame_ms: int = 20
    # Packets per ClientFrame. 1 sends plain `opus` frames, which every ASR build reads; > 1 sends
    # `OpusBatch` messages (fewer messages on the link) to an ASR that reads them.
    batch_packets: int = 1

    def __post_init__(self) -> None:
        if self.deadline_s <= 0 or self.download_timeout_s <= 0:
            raise ConfigError("TRANSCRIBE_DEADLINE_SEC and TRANSCRIBE_DOWNLOAD_TIMEOUT_SEC must be > 0")
        if self.frame_ms not in (10, 20, 40, 60) or self.batch_packets < 1 or self.max_download_bytes < 1:
            raise ConfigError("bad TRANSCRIBE_* frame, batch or size limit")


async def download(url: str, timeout_s: float, max_bytes: int, tls: TlsConfig | None = None) -> bytes:
    """GET the archive. 404/408/429/5xx and network errors are transient (the object store may be
    catching up); other 4xx are permanent. With `tls`, HTTPS trusts the internal CA as well as the
    system's and presents this process's certificate to an archive that asks for one."""
    if not url.startswith(("http://", "https://")):
        raise RecordingUnreadable(f"record_url {url!r} is not http(s)")
    ssl_context = client_ssl_context(tls)
    connector = aiohttp.TCPConnector(ssl=ssl_context) if ssl_context is not None else None
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s), connector=connector) as http,
            http.get(url) as resp,
        ):
            if resp.status != 200:
                msg = f"GET {url}: HTTP {resp.status}"
                if 400 <= resp.status < 500 and resp.status not in (404, 408, 429):
                    raise RecordingUnreadable(msg)
                if resp.status in _ARCHIVE_UNAVAILABLE:
                    raise ArchiveUnreachable(msg)
                raise TranscribeError(msg)
            if (resp.content_length or 0) > max_bytes:
                raise RecordingUnreadable(f"GET {url}: {resp.content_length} bytes > {max_bytes}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > max_bytes:
                    raise RecordingUnreadable(f"GET {url}: more than {max_bytes} bytes")
            return bytes(body)
    except aiohttp.ClientConnectionError as exc:
        raise ArchiveUnreachable(f"GET {url}: {type(exc).__name__}: {exc}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TranscribeError(f"GET {url}: {type(exc).__name__}: {exc}") from exc


def decode_to_pcm16(data: bytes) -> bytes:
    """Any container soundfile reads (Ogg/Opus, FLAC, WAV) -> PCM16 LE, 16 kHz, mono. Blocking."""
    import soundfile as sf
    import soxr

    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise RecordingUnreadable(f"cannot decode the recording: {exc}") from exc
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE and mono.size:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    pcm: bytes = (np.clip(mono, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    return pcm


def client_frames(pcm: bytes, start: asr_pb2.Start, frame_ms: int, batch_packets: int) -> list[asr_pb2.ClientFrame]:
    """Start, then the PCM as `frame_ms` packets (the last one zero-padded), `batch_packets` per message."""
    frame_bytes = SAMPLE_RATE * frame_ms // 1000 * 2
    if len(pcm) % frame_bytes:
        pcm = pcm + bytes(frame_bytes - len(pcm) % frame_bytes)
    packets = [
        asr_pb2.OpusPacket(data=pcm[off : off + frame_bytes], seq=seq)
        for seq, off in enumerate(range(0, len(pcm), frame_bytes))
    ]
    frames = [asr_pb2.ClientFrame(start=start)]
    for i in range(0, len(packets), batch_packets):
        group = packets[i : i + batch_packets]
        if len(group) == 1:
            frames.append(asr_pb2.ClientFrame(opus=group[0]))
        else:
            frames.append(asr_pb2.ClientFrame(batch=asr_pb2.OpusBatch(packets=group)))
    return frames


async def recognise(
    channel: grpc.aio.Channel, frames: list[asr_pb2.ClientFrame], timeout_s: float, lang_hint: str
) -> list[dict[str, Any]]:
    """Send the frames, half-close, collect finals until `end`.

    When the ASR ends the call while frames are still being written (busy, bad input), grpcio aio may
    report INTERNAL "Internal error from Core" instead of the server's status (grpc/grpc#36066); that
    is treated as transient like every code but INVALID_ARGUMENT. Bad input is still recognised: the
    ASR sends an `error` event before it aborts."""
    call = asr_pb2_grpc.RecognizeStub(channel).Stream(timeout=timeout_s)  # type: ignore[no-untyped-call]

    async def write_all() -> None:
        try:
            for frame in frames:
                await call.write(frame)
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call already ended; the reader reports why

    writer = asyncio.create_task(write_all())
    finals: list[dict[str, Any]] = []
    try:
        while (ev := await call.read()) is not grpc.aio.EOF:
            assert isinstance(ev, asr_pb2.AsrEvent)
            if ev.type == "final":
                start_s, end_s = [*list(ev.ts), 0.0, 0.0][:2]
                ts = [round(start_s, 3), round(end_s, 3)]  # float32 on the wire: drop its noise
                final: dict[str, Any] = {"text": ev.text, "ts": ts, "lang": ev.lang or lang_hint}
                if ev.words:
                    final["words"] = [w.to_json() for w in words_of(ev)]
                if ev.HasField("confidence"):
                    final["confidence"] = round(ev.confidence, 4)
                finals.append(final)
            elif ev.type == "error":
                if ev.code == "busy":  # documented as retryable: the member refused the stream for load
                    raise AsrUnavailable(f"ASR error busy: {ev.text}")
                raise AsrRefused(f"ASR error {ev.code or 'asr_error'}: {ev.text}")
            elif ev.type == "end":
                return finals
    except grpc.aio.AioRpcError as exc:
        msg = f"ASR {exc.code().name}: {exc.details()}"
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise AsrRefused(msg) from exc
        if exc.code() in _ASR_UNAVAILABLE:
            raise AsrUnavailable(msg) from exc
        raise TranscribeError(msg) from exc
    finally:
        call.cancel()
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    raise TranscribeError("ASR stream ended without an `end` event")


async def transcribe_recording(
    record_url: str,
    asr_addr: str,
    lang_hint: str,
    domain: str,
    *,
    flow_id: str = "",
    config: TranscribeConfig = TranscribeConfig(),
    executor: Executor | None = None,
    tls: TlsConfig | None = None,
) -> list[dict[str, Any]]:
    """Transcribe one archived recording; returns finals `{text, ts: [start, end], lang}`.

    Raises `TranscribeError` (retry later) or a `PermanentJobError` subclass (give up)."""
    t0 = time.monotonic()
    extra: dict[str, Any] = {"flowId": flow_id, "stage": "transcribe", "asr_link_codec": "pcm"}
    try:
        async with asyncio.timeout(config.deadline_s):
            data = await download(record_url, config.download_timeout_s, config.max_download_bytes, tls)
            loop = asyncio.get_running_loop()
            pcm = await loop.run_in_executor(executor, decode_to_pcm16, data)
            start = asr_pb2.Start(
                flow_id=flow_id,
                codec="pcm",
                sr=SAMPLE_RATE,
                channels=1,
                frame_ms=config.frame_ms,
                lang_hint=lang_hint,
                domain=domain,
            )
            frames = client_frames(pcm, start, config.frame_ms, config.batch_packets)
            remaining = config.deadline_s - (time.monotonic() - t0)
            async with grpc_channel(asr_addr, tls, GRPC_OPTIONS) as channel:
                finals = await recognise(channel, frames, max(remaining, 0.001), lang_hint)
    except TimeoutError as exc:
        raise TranscribeError(f"transcription passed its {config.deadline_s:g} s deadline") from exc
    log.info(
        "recording transcribed: %d finals",
        len(finals),
        extra={
            **extra,
            "bytes_in": len(data),
            "ns": len(pcm) // 2 * 62_500,
            "latency_ms": round((time.monotonic() - t0) * 1000),
        },
    )
    return finals
