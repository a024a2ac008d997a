"""The fakes of the test suite, one of each: they implement the real gRPC servicer or engine protocol
and do no real work. Test fixtures only, never the product.

- FakeVad, FakeCompress: load-test fakes of the downstream services, so a benchmark measures the
  gateway alone; each runs as its own process: `python -m tests.fakes vad|compress`.
- FakeRecognizer (asr.v1 Recognize, scriptable) and FakeAsrServer (it, with grpc.health.v1, on
  127.0.0.1): an ASR pool member in process.
- FakeLidEngine (the LidEngine protocol), FakeSpeechProbability (the LID service's speech gate) and
  FakeDelayEngine (the denoise Engine protocol).
- FakeBatchAsrEngine (the ASR Engine protocol with Whisper's batched partials): records batch sizes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common.envconf import nested
from common.server import GRPC_OPTIONS, ServerConfig
from common.service import Service, grpc_main
from common.tls import TlsConfig
from orchestrator.core.events import StageName
from orchestrator.driver import ConnectionClosedError
from orchestrator.stages.base import AudioSource, StageContext
from proto import asr_pb2, asr_pb2_grpc, common_pb2, compress_pb2, compress_pb2_grpc, vad_pb2_grpc
from services.asr.engines import BatchRequest, EngineStream, Result
from services.lid.speech import WINDOW_SAMPLES

SECOND = b"\x01\x00" * 16000  # one second of PCM16 for in-process sessions


class FakeConnection:
    """The client side of a session: scripted messages in, events out."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.taken = 0  # messages the driver has read
        self.sent: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.dropped = False  # `drop()`: lost without a close frame, like a cut TCP connection
        self.stalled_at: float | None = None  # set by a test: the client stopped reading then
        self.aborted = False

    def drop(self) -> None:
        """The network cut the connection: no close frame; what is sent from now on is lost."""
        self.dropped = True
        self.close_code = 1006
        self.incoming.put_nowait(None)

    def stalled_since(self) -> float | None:
        return self.stalled_at

    def abort(self) -> None:
        self.aborted = True
        if self.close_code is None:
            self.close_code = 1006  # what a client sees of a connection dropped without a close frame
        self.incoming.put_nowait(None)

    def send_start(self, pref: str = "auto") -> None:
        start = {"type": "start", "flowId": "f1", "return": ["lid", "asr"], "hints": {"user_lang_pref": pref}}
        self.incoming.put_nowait(json.dumps(start))

    async def receive(self) -> str | bytes | None:
        message = await self.incoming.get()
        if message is not None:
            self.taken += 1
        return message

    async def send(self, text: str) -> None:
        if self.close_code is not None:
            raise ConnectionClosedError
        self.sent.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.close_code = code
        self.incoming.put_nowait(None)  # like a socket: closing it ends the reading

    def kinds(self) -> list[str]:
        return [e["type"] for e in self.sent]


class FakeStage:
    """Consumes its feed; `answer` runs on every block (report what a real service would)."""

    def __init__(self, name: StageName, source: AudioSource = AudioSource.CLEAN) -> None:
        self.name, self.source, self.batch_ms = name, source, 100
        self.audio_bytes = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def answer(self, ctx: StageContext) -> None:
        return None

    async def run(self, ctx: StageContext) -> None:
        async for block in ctx.feed.blocks():
            await self.gate.wait()
            self.audio_bytes += len(block.pcm)
            await self.answer(ctx)
            await asyncio.sleep(0)  # a real stage awaits its service between messages


class FakeVad(vad_pb2_grpc.VadServicer):
    """Says speech starts at the first message and ends at the last; answers `last`."""

    async def Stream(
        self, request_iterator: AsyncIterator[common_pb2.AudioFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.AudioFrame]:
        first = True
        end = 0
        flow = ""
        async for frame in request_iterator:
            flow = frame.flow_id
            if first and frame.pcm:
                first = False
                yield common_pb2.AudioFrame(
                    flow_id=flow, seq=frame.seq, pts=frame.pts, activity=common_pb2.SPEECH_START
                )
            end = frame.pts + frame.ns
            if frame.last:
                break
        if not first:
            yield common_pb2.AudioFrame(flow_id=flow, pts=end, activity=common_pb2.SPEECH_END)
        yield common_pb2.AudioFrame(flow_id=flow, last=True)


class FakeCompress(compress_pb2_grpc.CompressServicer):
    """Counts the audio and answers a URL; stores nothing. `fail_after_frames`: the next call aborts
    UNAVAILABLE after that many frames (an archive dying mid-stream); `down`: every call aborts at
    once; `invalid`: every call (but one `fail_after_frames` cuts) is refused INVALID_ARGUMENT.
    `calls` counts the calls; with `keep`, `archived` holds (flowId, tenant metadata, PCM) of every
    call that completed."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.fail_after_frames: int | None = None
        self.down = False
        self.invalid = False  # every call aborts INVALID_ARGUMENT at once (refused for good)
        self.calls = 0
        self.archived: list[tuple[str, bytes, bytes]] = []

    async def Archive(
        self, request_iterator: AsyncIterator[common_pb2.AudioFrame], context: grpc.aio.ServicerContext
    ) -> compress_pb2.ArchiveResult:
        self.calls += 1
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "fake archive is down")
        fail_after, self.fail_after_frames = self.fail_after_frames, None
        if self.invalid and fail_after is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fake archive refuses the stream")
        flow, samples, pcm, frames = "", 0, bytearray(), 0
        async for frame in request_iterator:
            flow = frame.flow_id
            samples += len(frame.pcm) // 2
            if self.keep:
                pcm += frame.pcm
            frames += 1
            if fail_after is not None and frames >= fail_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "fake archive died mid-stream")
        if self.keep:
            tenant = dict(context.invocation_metadata() or ()).get("speechgw-tenant-bin", b"")
            self.archived.append((flow, tenant if isinstance(tenant, bytes) else tenant.encode(), bytes(pcm)))
        return compress_pb2.ArchiveResult(
            flow_id=flow,
            record_url=f"http://fake.invalid/records/{flow}.ogg",
            key=f"records/{flow}.ogg",
            duration_s=samples / 16000,
            codec="none",
            status="stored",
        )


RecognizerMode = Literal["ok", "busy", "unavailable", "error", "hang"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FakeRecognizer(asr_pb2_grpc.RecognizeServicer):
    """An ASR that records what each stream sends and answers as the real one does: `ready` at the
    Start, then, once the client is done writing, one `final` with `text` and `end`.

    `mode` (may change between calls): "ok"; "busy" aborts RESOURCE_EXHAUSTED at the Start (with no
    `error` event before it, unlike the real one); "unavailable" aborts UNAVAILABLE there; "error" answers
    an `error` event instead of the final; "hang" never answers after `ready`. `final_ts` is the final's
    [start, end] in seconds; None: [0, the duration of the packets' bytes read as PCM], which only means
    something for a `pcm` stream. The first `refusals` streams are refused as the ASR service does at its
    limit: an `error` event `busy` after the Start, then the end of the stream.
    """

    def __init__(
        self,
        text: str = "fake transcript",
        mode: RecognizerMode = "ok",
        final_ts: tuple[float, float] | None = None,
        refusals: int = 0,
    ) -> None:
        self.text, self.mode, self.final_ts, self.refusals = text, mode, final_ts, refusals
        self.streams: list[list[str]] = []  # per stream, the payload kind of each frame received, in order
        self.starts: list[asr_pb2.Start] = []  # the Start of each stream
        self.packets: list[list[asr_pb2.OpusPacket]] = []  # per stream, every packet, single or batched

    @property
    def lang_hints(self) -> list[str]:
        return [start.lang_hint for start in self.starts]

    async def Stream(
        self, request_iterator: AsyncIterator[asr_pb2.ClientFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asr_pb2.AsrEvent]:
        kinds: list[str] = []
        received: list[asr_pb2.OpusPacket] = []
        self.streams.append(kinds)
        self.packets.append(received)
        first = await anext(aiter(request_iterator), None)
        if first is not None:
            kinds.append(first.WhichOneof("payload") or "empty")
        if first is None or first.WhichOneof("payload") != "start":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first frame must be Start")
        assert first is not None
        start = first.start
        self.starts.append(start)
        if self.refusals > 0:
            self.refusals -= 1
            yield asr_pb2.AsrEvent(type="error", flow_id=start.flow_id, code="busy", text="at its limit")
            return
        if self.mode == "busy":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "ASR busy: fake")
        if self.mode == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "fake pool is down")
        yield asr_pb2.AsrEvent(type="ready", flow_id=start.flow_id, model="fake")
        payload_bytes = 0
        async for frame in request_iterator:
            kind = frame.WhichOneof("payload") or "empty"
            kinds.append(kind)
            packets = [frame.opus] if kind == "opus" else list(frame.batch.packets) if kind == "batch" else []
            received += packets
            payload_bytes += sum(len(p.data) for p in packets)
        if self.mode == "hang":
            await asyncio.Event().wait()
        if self.mode == "error":
            yield asr_pb2.AsrEvent(type="error", flow_id=start.flow_id, code="decode_failed", text="fake")
            return
        ts = self.final_ts or (0.0, payload_bytes / 2 / start.sr)
        yield asr_pb2.AsrEvent(type="final", flow_id=start.flow_id, text=self.text, ts=ts, lang="en")
        yield asr_pb2.AsrEvent(type="end", flow_id=start.flow_id)


class FakeAsrServer:
    """A grpc.aio server on 127.0.0.1 with grpc.health.v1 (reporting `status`) and a FakeRecognizer:
    an ASR pool member. `start()` after `stop()` comes back on the same port, as a restarted process."""

    def __init__(
        self,
        recognizer: FakeRecognizer | None = None,
        status: health_pb2.HealthCheckResponse.ServingStatus.ValueType = SERVING,
    ) -> None:
        self.recognizer = recognizer if recognizer is not None else FakeRecognizer()
        self.status = status
        self.port = 0
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()

    async def start(self) -> FakeAsrServer:
        self.server = grpc.aio.server(options=GRPC_OPTIONS)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        asr_pb2_grpc.add_RecognizeServicer_to_server(self.recognizer, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()
        await self.health.set("", self.status)
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None

    async def __aenter__(self) -> FakeAsrServer:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class FakeLidEngine:
    """Implements the LidEngine protocol: answers the scripted `probs`, records the samples of each
    call, and fails on audio that starts with the bytes `fail_on`."""

    name = "fake"

    def __init__(
        self, probs: Sequence[tuple[str, float]] = (("en", 0.95), ("zh", 0.05)), fail_on: bytes | None = None
    ) -> None:
        self.probs = list(probs)
        self.fail_on = fail_on
        self.calls: list[int] = []

    def probabilities(self, pcm: bytes) -> list[tuple[str, float]]:
        self.calls.append(len(pcm) // 2)
        if self.fail_on is not None and pcm.startswith(self.fail_on):
            raise RuntimeError("fake engine failure")
        return self.probs


class FakeSpeechProbability:
    """Implements the LID service's SpeechProbability: for each whole VAD window, 0.95 (speech) when the
    window starts with the sample `speech_starts_with`, else 0.02; every window is speech when that is
    None. Counts the windows it is given."""

    def __init__(self, speech_starts_with: bytes | None = None) -> None:
        self.speech_starts_with = speech_starts_with
        self.windows = 0

    def __call__(self, pcm: bytes) -> list[float]:
        assert len(pcm) % (2 * WINDOW_SAMPLES) == 0, "the policy feeds whole windows only"
        starts = [pcm[i : i + 2] for i in range(0, len(pcm), 2 * WINDOW_SAMPLES)]
        self.windows += len(starts)
        return [0.95 if self.speech_starts_with in (None, s) else 0.02 for s in starts]


class FakeDelayEngine:
    """Implements the denoise Engine protocol: an identity 'denoiser' with `delay_samples` of leading
    zeros that releases its output only in blocks, like an STFT engine does."""

    name = "fake"

    def __init__(self, delay_samples: int = 100, block: int = 256) -> None:
        self.delay_samples = delay_samples
        self._block = block
        self._buf = np.zeros(delay_samples, dtype=np.float32)

    def process(self, samples: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate((self._buf, samples))
        whole = (self._buf.size // self._block) * self._block
        out, self._buf = self._buf[:whole], self._buf[whole:]
        return out

    def flush(self) -> np.ndarray:
        out, self._buf = self._buf, np.zeros(self.delay_samples, dtype=np.float32)
        return out


@dataclass(frozen=True)
class FakeConfig:
    server: ServerConfig = nested(ServerConfig, prefix="FAKE_")
    tls: TlsConfig = nested(TlsConfig)  # GRPC_TLS_*, TLS_CA_FILE: mTLS identity (common/tls.py)


def main(kind: str) -> None:
    def add(server: grpc.aio.Server) -> None:
        if kind == "vad":
            vad_pb2_grpc.add_VadServicer_to_server(FakeVad(), server)
        elif kind == "compress":
            compress_pb2_grpc.add_CompressServicer_to_server(FakeCompress(), server)
        else:
            raise SystemExit(f"unknown fake {kind!r}")

    @asynccontextmanager
    async def fake_service(config: FakeConfig) -> AsyncIterator[Service]:
        yield Service(add)

    grpc_main(f"fake-{kind}", FakeConfig, fake_service)


if __name__ == "__main__":
    main(sys.argv[1])


class FakeBatchAsrEngine:
    """An ASR engine that re-decodes like Whisper and decodes in batches (`transcribe_partials`,
    `transcribe_finals`). Its text names what it heard: "level L, N ms" (L the loudest sample in
    PCM16 units), so each session can recognise its own audio. Every batch's size is recorded in
    `batches` (partials) or `final_batches`; while `gate` is clear decodes wait on it (at most
    5 s); a request whose level is in `fail_levels` makes any decode containing it raise."""

    name = "fake-batch"
    model = "fake-batch-model"
    supports_hotwords = True
    incremental = False

    def __init__(self, fail_levels: Sequence[int] = ()) -> None:
        self.batches: list[int] = []
        self.final_batches: list[int] = []
        self.fail_levels = set(fail_levels)
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()  # a decode is on a worker

    @staticmethod
    def level(pcm: np.ndarray) -> int:
        return round(float(np.max(np.abs(pcm))) * 32768) if pcm.size else 0

    def _text(self, pcm: np.ndarray) -> str:
        if self.level(pcm) in self.fail_levels:
            raise RuntimeError(f"cannot decode level {self.level(pcm)}")
        return f"level {self.level(pcm)}, {pcm.size * 1000 // 16000} ms"

    def transcribe(self, pcm: np.ndarray, lang: str = "", hotwords: tuple[str, ...] = ()) -> Result:
        self.started.set()
        self.gate.wait(5)
        return Result(self._text(pcm), lang or "en")

    def transcribe_partials(self, requests: Sequence[BatchRequest]) -> list[Result]:
        self.started.set()
        self.gate.wait(5)
        self.batches.append(len(requests))
        return [Result(self._text(r.pcm), r.lang or "en") for r in requests]

    def transcribe_finals(self, requests: Sequence[BatchRequest]) -> list[Result]:
        self.started.set()
        self.gate.wait(5)
        self.final_batches.append(len(requests))
        return [Result(self._text(r.pcm), r.lang or "en") for r in requests]

    def open_stream(self, lang: str = "", hotwords: tuple[str, ...] = ()) -> EngineStream:
        raise AssertionError("a batch-capable engine's decodes go through transcribe_partials/_finals")
