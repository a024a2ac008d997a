"""One recognition stream, without gRPC: frames in, events out (SPEC §3, §4).

A reader task feeds packets through the reorder window, the frame decoder and the utterance
segmenter; a decode task turns closed utterances into finals (in timeline order) and, between them,
re-decodes the open utterance for a partial at most once per partial interval, only when a decode
worker is idle. Half-close flushes: the last final, then "end".
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from proto import asr_pb2
from services.asr import metrics
from services.asr.codec import BadPacket, FrameDecoder
from services.asr.config import AsrConfig
from services.asr.engines import BatchRequest, Engine, EngineStream, Result
from services.asr.reorder import GapTooLarge, PacketReorderBuffer
from services.asr.scheduler import DecodeScheduler
from services.asr.segmenter import NS_PER_S, OpenUtterance, Utterance, UtteranceSegmenter

log = logging.getLogger(__name__)
from common.audio import SAMPLE_RATE  # noqa: E402

Emit = Callable[[asr_pb2.AsrEvent], Awaitable[None]]


class SessionError(Exception):
    """Bad input on the stream: ends the call with INVALID_ARGUMENT and this message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class StreamParams:
    """The validated Start frame."""

    flow_id: str
    codec: str
    frame_ms: int
    lang: str
    hotwords: tuple[str, ...]
    partial_interval_ms: int
    vad_endpoints: bool = False  # decode only between the client's VAD endpoints

    @classmethod
    def from_start(cls, start: asr_pb2.Start, config: AsrConfig) -> StreamParams:
        codec = start.codec or "opus"
        if codec not in ("opus", "pcm"):
            raise SessionError("bad_codec", f"codec {start.codec!r}: expected 'opus' or 'pcm'")
        if start.sr not in (0, SAMPLE_RATE):
            raise SessionError("bad_sample_rate", f"sr {start.sr}: only {SAMPLE_RATE} Hz is served")
        if start.channels not in (0, 1):
            raise SessionError("bad_channels", f"channels {start.channels}: only mono is served")
        frame_ms = start.frame_ms or 20
        if frame_ms not in (10, 20, 40, 60):
            raise SessionError("bad_frame_ms", f"frame_ms {start.frame_ms}: expected 10, 20, 40 or 60")
        if start.partial_interval_ms < 0:
            raise SessionError("bad_partial_interval", "partial_interval_ms must be >= 0")
        interval = start.partial_interval_ms or config.partial_interval_ms
        lang = "" if start.lang_hint in ("", "auto") else start.lang_hint
        hotwords = tuple(w.strip() for w in start.hotwords if w.strip())
        return cls(
            start.flow_id,
            codec,
            frame_ms,
            lang or config.lang,
            hotwords,
            max(interval, config.min_partial_interval_ms),
            start.vad_endpoints,
        )


@dataclass(frozen=True)
class _Taken:
    """The open utterance's audio a partial decodes, as it was when the worker was granted."""

    utt: OpenUtterance
    audio_at: float  # monotonic time its audio had arrived


@dataclass
class _Closed:
    utt: Utterance
    closed_at: float  # monotonic time the audio closing it had arrived


class AsrSession:
    """Runs one stream: `await session.run(frames, emit)` after the Start frame was read."""

    def __init__(
        self,
        params: StreamParams,
        engine: Engine,
        scheduler: DecodeScheduler,
        config: AsrConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.params = params
        self._engine, self._scheduler, self._config, self._clock = engine, scheduler, config, clock
        self._reorder = PacketReorderBuffer(config.reorder_window_packets, config.max_gap_packets)
        self._decoder = FrameDecoder(params.codec, SAMPLE_RATE, params.frame_ms)
        self._segmenter = UtteranceSegmenter(
            SAMPLE_RATE,
            config.max_utterance_ms,
            config.preroll_ms,
            gated=params.vad_endpoints,
            speech_preroll_ms=config.speech_preroll_ms,
            speech_tail_ms=config.speech_tail_ms,
            min_continuation_ms=config.min_partial_audio_ms,
        )
        self._closed: deque[_Closed] = deque()
        self._changed = asyncio.Event()
        self._ended = False
        self._last_audio_at = 0.0
        self._lock = threading.Lock()  # guards the engine stream, used from decode threads
        self._stream: EngineStream | None = None
        self._stream_index = -1
        self._stream_fed = 0
        self._want_audio = False
        self._last_partial_at = -1e9
        self._last_partial_key: tuple[int, int] = (-1, -1)
        self._last_partial: tuple[int, str] = (-1, "")  # (utterance, text): repeats are not sent
        self._first_asked: tuple[int, float] = (-1, 0.0)  # (utterance, when it first asked for a partial)
        # (utterance, end of the audio decoded in ns, result) of the last partial decode: a final whose
        # speech ended within that audio reuses it (text, words, confidence) instead of decoding again.
        self._last_decode: tuple[int, int, Result] = (-1, 0, Result("", ""))
        self._final_ready = asyncio.Event()  # an utterance closed or the stream ended
        self._partial_running = False
        self._labels = {"engine": engine.name, "model": engine.model}
        self._audio_seconds = metrics.ASR_AUDIO_SECONDS.labels(**self._labels)
        # Whisper's partials and finals re-decode the whole utterance and can share a batched decode
        # with other sessions' (DecodeScheduler.batch); an incremental engine decodes its own stream.
        self._batch_decode = None if engine.incremental else getattr(engine, "transcribe_partials", None)
        self._batch_finals = None if engine.incremental else getattr(engine, "transcribe_finals", None)

    async def run(self, frames: AsyncIterator[asr_pb2.ClientFrame], emit: Emit) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read(frames))
                tg.create_task(self._decode_loop(emit))
        except BaseExceptionGroup as group:
            errors = [e for e in group.exceptions if isinstance(e, SessionError)]
            raise (errors[0] if errors else group.exceptions[0]) from None
        finally:
            self._count_packets()
            await asyncio.to_thread(self._close_stream)

    # reader side: packets -> PCM -> utterances ------------------------------------------------
    async def _read(self, frames: AsyncIterator[asr_pb2.ClientFrame]) -> None:
        async for frame in frames:
            kind = frame.WhichOneof("payload")
            if kind == "opus":
                self._on_packet(frame.opus)
            elif kind == "batch":
                for packet in frame.batch.packets:
                    self._on_packet(packet)
            elif kind == "endpoint":
                self._on_endpoint(frame.endpoint)
            elif kind == "start":
                raise SessionError("duplicate_start", "Start may only be the first frame")
            else:
                raise SessionError("empty_frame", "ClientFrame without payload")
        for slot in self._reorder.flush():  # half-close = flush (SPEC §1)
            self._push_pcm(slot.seq, self._decoder.decode(slot))
        self._add_closed(self._segmenter.flush())
        self._ended = True
        self._final_ready.set()
        self._changed.set()

    def _on_packet(self, packet: asr_pb2.OpusPacket) -> None:
        if packet.seq < 0:
            raise SessionError("bad_seq", f"seq {packet.seq} is negative")
        try:
            self._decoder.check(packet.data, packet.pcm)
            slots = self._reorder.push(packet.seq, packet.data, packet.pcm)
            for slot in slots:
                self._push_pcm(slot.seq, self._decoder.decode(slot))
        except (BadPacket, GapTooLarge) as exc:
            raise SessionError("bad_packet", str(exc)) from None

    def _push_pcm(self, seq: int, frame: np.ndarray) -> None:
        # Packet seq n covers [n * frame_ms, (n + 1) * frame_ms) on the session timeline.
        start_ns = seq * self.params.frame_ms * 1_000_000
        self._last_audio_at = self._clock()
        self._audio_seconds.inc(frame.size / SAMPLE_RATE)
        self._add_closed(self._segmenter.push_audio(start_ns, frame.astype(np.float32) / 32768.0))

    def _on_endpoint(self, endpoint: asr_pb2.Endpoint) -> None:
        if endpoint.kind == asr_pb2.Endpoint.KIND_UNSPECIFIED:
            raise SessionError("bad_endpoint", "Endpoint kind is unspecified")
        if endpoint.pts < 0:
            raise SessionError("bad_endpoint", f"Endpoint pts {endpoint.pts} is negative")
        if endpoint.kind == asr_pb2.Endpoint.FINALIZE:
            self._add_closed(self._segmenter.push_finalize(endpoint.pts))
            return
        is_start = endpoint.kind == asr_pb2.Endpoint.SPEECH_START
        self._add_closed(self._segmenter.push_endpoint(is_start, endpoint.pts))

    def _add_closed(self, utts: list[Utterance]) -> None:
        now = self._clock()
        for utt in utts:
            self._closed.append(_Closed(utt, max(now, self._last_audio_at)))
            self._final_ready.set()
        if utts or self._want_audio:
            self._changed.set()

    # decode side: finals first, partials when idle --------------------------------------------
    async def _decode_loop(self, emit: Emit) -> None:
        while True:
            self._changed.clear()
            self._final_ready.clear()
            if self._closed:
                await self._final(self._closed.popleft(), emit)
                continue
            if self._ended:
                await self._send(emit, asr_pb2.AsrEvent(type="end"))
                return
            wait_s = await self._maybe_partial(emit)
            if self._closed or self._ended:
                continue
            try:
                await asyncio.wait_for(self._changed.wait(), wait_s)
            except TimeoutError:
                pass
            finally:
                self._want_audio = False

    async def _final(self, closed: _Closed, emit: Emit) -> None:
        utt = closed.utt
        reused = self._reusable(utt)
        if utt.pcm.size == 0:  # a finalize with nothing open
            result = Result("", self.params.lang)
        elif reused is not None:
            metrics.ASR_FINALS_REUSED.labels(**self._labels).inc()
            with self._lock:
                if self._stream_index == utt.index:
                    self._close_stream_locked()
            result = replace(reused, lang=self.params.lang)
        else:
            try:
                result, decoded, took = await self._decode_final(utt)
            except Exception as exc:  # an engine failure costs this utterance, not the stream
                log.exception("final decode failed", extra={"flowId": self.params.flow_id, "err_code": "decode_failed"})
                event = asr_pb2.AsrEvent(type="error", code="decode_failed", text=str(exc), ts=list(utt.ts))
                await self._send(emit, event)
                return
            self._observe_rtf("final", took, decoded)
            self._count_refusal("final", result.refused)
        if result.text or utt.finalized:  # a finalize is always answered, with "" when nothing was said
            event = asr_pb2.AsrEvent(
                type="final",
                text=result.text,
                ts=list(utt.ts),
                lang=result.lang or self.params.lang,
                from_finalize=utt.finalized,
            )
            _add_words(event, result, utt.start_ns)
            await self._send(emit, event, since=closed.closed_at)

    async def _decode_final(self, utt: Utterance) -> tuple[Result, int, float]:
        """Decode a closed utterance: (result, samples decoded, decode seconds). Whisper's finals can
        share a batched decode with other sessions' finals (DecodeScheduler.batch, ASR_BATCH_MAX)."""
        if self._batch_finals is not None:
            request = BatchRequest(utt.pcm, self.params.lang, self.params.hotwords)
            group = (self.params.lang, self.params.hotwords)
            outcome = await self._scheduler.batch(group, lambda: request, self._batch_finals)
            assert outcome is not None  # prepare never withdraws
            metrics.ASR_BATCH_SIZE.labels(kind="final", **self._labels).observe(outcome.size)
            return outcome.result, utt.pcm.size, outcome.seconds

        def decode() -> tuple[Result, int, float]:
            t0 = time.perf_counter()
            with self._lock:
                if self._engine.incremental and self._stream_index == utt.index and self._stream:
                    stream, self._stream = self._stream, None
                    rest = utt.pcm[self._stream_fed :]
                    stream.accept(rest)
                    return stream.finish(), rest.size, time.perf_counter() - t0
                self._close_stream_locked()
                result = self._engine.transcribe(utt.pcm, self.params.lang, self.params.hotwords)
                return result, utt.pcm.size, time.perf_counter() - t0

        return await self._scheduler.run(decode)

    def _reusable(self, utt: Utterance) -> Result | None:
        """The last partial's result when it decoded all of this utterance's audio, speech end and tail
        (Whisper only: an incremental engine finishes its own stream)."""
        index, end_ns, result = self._last_decode
        if self._engine.incremental or not self._config.reuse_partial_final or utt.speech_end_ns is None:
            return None
        # The partial must have heard the speech end and its tail: a decode that stops right at the
        # end of the last word can lose it (measured: lone WER 0.095 -> 0.238 with `>= speech_end`).
        return result if index == utt.index and end_ns >= utt.end_ns else None

    async def _maybe_partial(self, emit: Emit) -> float:
        """Decode the open utterance for a partial if one is due; return how long to wait next."""
        interval_s = self.params.partial_interval_ms / 1000
        now = self._clock()
        open_utt = self._segmenter.open
        min_samples = max(self._config.min_partial_audio_ms * SAMPLE_RATE // 1000, 1)
        if (
            open_utt is None
            or open_utt.pcm.size < min_samples
            or (open_utt.index, open_utt.pcm.size) == self._last_partial_key
        ):
            self._want_audio = True  # wake on the next packet: nothing to decode yet
            return interval_s
        due_in = self._last_partial_at + interval_s - now
        if due_in > 0:
            return due_in
        # Until an utterance has its first partial, its decodes go before any update (a session
        # decodes at most once per interval, so this cannot starve the others); within each, who
        # asked first goes first. A first partial that is tried again (its decode found no text yet)
        # keeps the place of its first try: the utterance waiting longest for its first text goes first.
        first = self._last_partial[0] != open_utt.index
        if self._first_asked[0] != open_utt.index:
            self._first_asked = (open_utt.index, now)
        key = (0, self._first_asked[1]) if first else (1, now)
        task = asyncio.create_task(self._partial(emit, key, interval_s))
        ready = asyncio.create_task(self._final_ready.wait())
        try:
            await asyncio.wait((task, ready), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not task.done() and not self._partial_running:
            task.cancel()  # a final is due before a worker came: it goes first
            metrics.ASR_PARTIALS_SKIPPED.labels(**self._labels).inc()
        await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            return 0.0
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        return interval_s

    async def _partial(self, emit: Emit, key: tuple[int, float], interval_s: float) -> None:
        asked = self._clock()
        if self._batch_decode is not None:
            await self._partial_batched(emit, key, asked, interval_s, self._batch_decode)
            return
        async with self._scheduler.slot(partial_key=key):
            self._partial_running = True
            try:
                await self._partial_decode(emit, asked, interval_s)
            finally:
                self._partial_running = False

    def _take_partial_audio(self, asked: float, interval_s: float) -> _Taken | None:
        """The freshest audio of the open utterance, taken when a worker is ours (None: nothing to do)."""
        waited = self._clock() - asked
        if waited >= interval_s:  # the partials this session would have had meanwhile
            metrics.ASR_PARTIALS_SKIPPED.labels(**self._labels).inc(int(waited / interval_s))
        open_utt = self._segmenter.open
        if open_utt is None or self._closed:
            return None
        return _Taken(open_utt, self._last_audio_at)

    async def _partial_batched(
        self,
        emit: Emit,
        key: tuple[int, float],
        asked: float,
        interval_s: float,
        decode: Callable[[Sequence[BatchRequest]], Sequence[Result]],
    ) -> None:
        """The partial as one member of a cross-session batch (ASR_BATCH_MAX; a batch of one alone)."""
        taken: _Taken | None = None

        def prepare() -> BatchRequest | None:
            nonlocal taken
            self._partial_running = True  # granted: a final waits for this decode from now on
            taken = self._take_partial_audio(asked, interval_s)
            return None if taken is None else BatchRequest(taken.utt.pcm, self.params.lang, self.params.hotwords)

        group = (self.params.lang, self.params.hotwords)
        try:
            outcome = await self._scheduler.batch(group, prepare, decode, partial_key=key)
        finally:
            self._partial_running = False
        if outcome is None or taken is None:
            return
        metrics.ASR_BATCH_SIZE.labels(kind="partial", **self._labels).observe(outcome.size)
        result = outcome.result
        await self._partial_result(emit, taken, taken.utt.pcm.size, outcome.seconds, result, interval_s)

    async def _partial_decode(self, emit: Emit, asked: float, interval_s: float) -> None:
        taken = self._take_partial_audio(asked, interval_s)
        if taken is None:
            return
        pcm, index = taken.utt.pcm, taken.utt.index

        def decode() -> tuple[Result, int, float]:
            t0 = time.perf_counter()
            with self._lock:
                if self._stream_index != index or self._stream is None:
                    self._close_stream_locked()
                    self._stream = self._engine.open_stream(self.params.lang, self.params.hotwords)
                    self._stream_index, self._stream_fed = index, 0
                new = pcm[self._stream_fed :]
                self._stream.accept(new)
                self._stream_fed = pcm.size
                result = self._stream.partial()
                # Whisper re-decodes the whole utterance, an incremental engine only the new audio.
                decoded = new.size if self._engine.incremental else pcm.size
                return result, decoded, time.perf_counter() - t0

        result, decoded, took = await self._scheduler.execute(decode)
        await self._partial_result(emit, taken, decoded, took, result, interval_s)

    async def _partial_result(
        self, emit: Emit, taken: _Taken, decoded: int, took: float, result: Result, interval_s: float
    ) -> None:
        """Account for one partial decode and send its text if it is new and the utterance still open."""
        open_utt = taken.utt
        pcm, index = open_utt.pcm, open_utt.index
        self._observe_rtf("partial", took, decoded)
        self._count_refusal("partial", result.refused)
        text = result.text
        self._last_partial_key = (index, pcm.size)
        self._last_decode = (index, open_utt.end_ns, result)
        self._last_partial_at = self._clock()  # one decode per interval, text or not
        if self._last_partial[0] != index:
            # No partial yet for this utterance (too little speech decoded): try again after half
            # an interval, the first partial is the one a user waits for.
            self._last_partial_at -= interval_s / 2
        current = self._segmenter.open
        still_open = current is not None and current.index == index and not self._ended
        if text and still_open and (index, text) != self._last_partial:
            self._last_partial = (index, text)
            self._last_partial_at = self._clock()
            ts = [open_utt.start_ns / NS_PER_S, open_utt.end_ns / NS_PER_S]
            event = asr_pb2.AsrEvent(type="partial", text=text, ts=ts)
            _add_words(event, result, open_utt.start_ns)
            await self._send(emit, event, since=taken.audio_at)

    def _count_refusal(self, kind: str, guard: str) -> None:
        if guard:
            metrics.ASR_GUARD_REFUSED.labels(kind=kind, guard=guard, **self._labels).inc()

    def _close_stream_locked(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream, self._stream_index, self._stream_fed = None, -1, 0

    def _close_stream(self) -> None:
        """Release the engine stream once no decode thread uses it (blocks on the lock)."""
        with self._lock:
            self._close_stream_locked()

    async def _send(self, emit: Emit, event: asr_pb2.AsrEvent, since: float | None = None) -> None:
        event.flow_id = self.params.flow_id
        event.model = self._engine.model
        if since is not None:
            latency_ms = (self._clock() - since) * 1000
            metrics.ASR_LATENCY_MS.labels(type=event.type, **self._labels).observe(latency_ms)
        metrics.ASR_EVENTS.labels(type=event.type, **self._labels).inc()
        await emit(event)

    def _observe_rtf(self, kind: str, seconds: float, samples: int) -> None:
        metrics.ASR_DECODE_SECONDS.labels(kind=kind, **self._labels).inc(seconds)
        if samples:
            metrics.ASR_RTF.labels(kind=kind, **self._labels).observe(seconds * SAMPLE_RATE / samples)

    def summary(self) -> dict[str, int]:
        """Packet counts of this stream, for the closing log line."""
        stats = self._reorder.stats
        return {
            "packets": stats.released,
            "concealed": stats.concealed,
            "late": stats.late,
            "duplicate": stats.duplicate,
            "corrupt": self._decoder.corrupt,
        }

    def _count_packets(self) -> None:
        stats, codec = self._reorder.stats, self.params.codec
        for outcome, n in (
            ("released", stats.released),
            ("concealed", stats.concealed),
            ("late", stats.late),
            ("duplicate", stats.duplicate),
            ("corrupt", self._decoder.corrupt),
        ):
            if n:
                metrics.ASR_PACKETS.labels(codec=codec, outcome=outcome).inc(n)


def _add_words(event: asr_pb2.AsrEvent, result: Result, start_ns: int) -> None:
    """The result's words (times from its audio's first sample) on the session timeline, and its
    confidence, into `event`."""
    offset_s = start_ns / NS_PER_S
    for w in result.words:
        word = event.words.add(word=w.word, start=round(w.start_s + offset_s, 3), end=round(w.end_s + offset_s, 3))
        if w.confidence is not None:
            word.confidence = w.confidence
    if result.confidence is not None:
        event.confidence = result.confidence
