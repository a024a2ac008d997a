"""The ASR session core without gRPC: partial throttling, finals in order, flush, bad frames,
and the admission limit (SPEC §2 `PARTIAL_INTERVAL_MS`, §4)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from proto import asr_pb2
from services.asr.config import AsrConfig
from services.asr.engines import EngineStream, Result
from services.asr.scheduler import Admission, Busy, DecodeScheduler
from services.asr.session import AsrSession, SessionError, StreamParams
from services.asr.words import Word
from tests.conftest import wait_for
from tests.poll import until

pytestmark = pytest.mark.unit
MS = 1_000_000


class FakeEngine:
    """Implements the Engine interface; text says how much audio it saw; decodes take `decode_s`."""

    name = "fake"
    model = "fake-model"
    supports_hotwords = False
    incremental = False

    def __init__(self, decode_s: float = 0.005) -> None:
        self.decode_s = decode_s
        self.partial_calls = 0
        self.partial_samples = 0  # audio of the last partial decode
        self.gate = threading.Event()
        self.gate.set()

    def transcribe(self, pcm: np.ndarray, lang: str = "", hotwords: tuple[str, ...] = ()) -> Result:
        self.gate.wait(5)
        time.sleep(self.decode_s)
        return Result(f"heard {pcm.size * 1000 // 16000} ms", lang or "en")

    def open_stream(self, lang: str = "", hotwords: tuple[str, ...] = ()) -> EngineStream:
        return FakeStream(self, lang)


class FakeStream:
    def __init__(self, engine: FakeEngine, lang: str) -> None:
        self.engine, self.lang, self.chunks = engine, lang, [np.zeros(0, np.float32)]

    def accept(self, pcm: np.ndarray) -> None:
        self.chunks.append(pcm)

    def partial(self) -> Result:
        self.engine.partial_calls += 1
        audio = np.concatenate(self.chunks)
        self.engine.partial_samples = audio.size
        return self.engine.transcribe(audio)

    def finish(self) -> Result:
        return self.engine.transcribe(np.concatenate(self.chunks), self.lang)

    def close(self) -> None:
        self.chunks.clear()


def pcm_frame(seq: int) -> asr_pb2.ClientFrame:
    return asr_pb2.ClientFrame(opus=asr_pb2.OpusPacket(data=b"\x01\x00" * 320, seq=seq))


def endpoint(start: bool, ms: int) -> asr_pb2.ClientFrame:
    kind = asr_pb2.Endpoint.SPEECH_START if start else asr_pb2.Endpoint.SPEECH_END
    return asr_pb2.ClientFrame(endpoint=asr_pb2.Endpoint(kind=kind, pts=ms * MS))


async def paced(frames: list[asr_pb2.ClientFrame], gap_s: float) -> AsyncIterator[asr_pb2.ClientFrame]:
    for frame in frames:
        yield frame
        await asyncio.sleep(gap_s)


async def run_session(
    frames: AsyncIterator[asr_pb2.ClientFrame],
    engine: FakeEngine,
    interval_ms: int = 250,
    scheduler: DecodeScheduler | None = None,
    config: AsrConfig | None = None,
    vad_endpoints: bool = False,
) -> list[tuple[float, asr_pb2.AsrEvent]]:
    config = config or AsrConfig(min_partial_audio_ms=100, speech_preroll_ms=0, speech_tail_ms=0)
    start = asr_pb2.Start(
        flow_id="f1",
        codec="pcm",
        sr=16000,
        channels=1,
        frame_ms=20,
        partial_interval_ms=interval_ms,
        vad_endpoints=vad_endpoints,
    )
    params = StreamParams.from_start(start, config)
    events: list[tuple[float, asr_pb2.AsrEvent]] = []

    async def emit(event: asr_pb2.AsrEvent) -> None:
        events.append((time.monotonic(), event))

    await AsrSession(params, engine, scheduler or DecodeScheduler(1), config).run(frames, emit)
    return events


async def test_partials_are_never_closer_than_the_interval() -> None:
    frames = [endpoint(True, 0)] + [pcm_frame(i) for i in range(150)] + [endpoint(False, 3000)]
    events = await run_session(paced(frames, 0.005), FakeEngine(), interval_ms=100)
    partial_at = [t for t, e in events if e.type == "partial"]
    assert len(partial_at) >= 3
    assert min(np.diff(partial_at)) >= 0.1
    assert [e.type for _, e in events][-2:] == ["final", "end"]


async def test_finals_follow_the_endpoints_in_timeline_order_then_end() -> None:
    frames = [
        endpoint(True, 100),
        endpoint(False, 500),
        endpoint(True, 600),
        endpoint(False, 900),
        endpoint(True, 1000),
    ] + [pcm_frame(i) for i in range(60)]
    events = await run_session(paced(frames, 0), FakeEngine(), interval_ms=1000)
    finals = [e for _, e in events if e.type == "final"]
    assert [(e.text, [round(x, 3) for x in e.ts]) for e in finals] == [
        ("heard 400 ms", [0.1, 0.5]),
        ("heard 300 ms", [0.6, 0.9]),
        ("heard 200 ms", [1.0, 1.2]),
    ]
    assert all(e.flow_id == "f1" and e.model == "fake-model" and e.lang == "en" for e in finals)
    assert events[-1][1].type == "end"


async def test_partials_are_skipped_while_the_decoders_are_busy() -> None:
    engine = FakeEngine()
    scheduler = DecodeScheduler(1)
    engine.gate.clear()  # another session's final holds the only worker
    blocker = asyncio.create_task(scheduler.run(lambda: engine.transcribe(np.zeros(1, np.float32))))
    frames = [endpoint(True, 0)] + [pcm_frame(i) for i in range(40)]

    async def release_later() -> AsyncIterator[asr_pb2.ClientFrame]:
        async for frame in paced(frames, 0.005):
            yield frame
        engine.gate.set()

    events = await run_session(release_later(), engine, interval_ms=50, scheduler=scheduler)
    await blocker
    assert engine.partial_calls == 0
    assert [e.type for _, e in events] == ["final", "end"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (asr_pb2.ClientFrame(start=asr_pb2.Start(codec="pcm")), "duplicate_start"),
        (asr_pb2.ClientFrame(), "empty_frame"),
        (asr_pb2.ClientFrame(opus=asr_pb2.OpusPacket(data=b"\x00" * 3, seq=1)), "bad_packet"),
        (asr_pb2.ClientFrame(opus=asr_pb2.OpusPacket(data=b"\x00\x00", seq=-1)), "bad_seq"),
        (asr_pb2.ClientFrame(endpoint=asr_pb2.Endpoint(pts=5)), "bad_endpoint"),
    ],
)
async def test_bad_frames_end_the_session_with_a_code(frame: asr_pb2.ClientFrame, code: str) -> None:
    with pytest.raises(SessionError) as err:
        await run_session(paced([pcm_frame(0), frame, pcm_frame(1)], 0), FakeEngine())
    assert err.value.code == code


@pytest.mark.parametrize(
    "start",
    [
        asr_pb2.Start(codec="flac"),
        asr_pb2.Start(sr=8000),
        asr_pb2.Start(channels=2),
        asr_pb2.Start(frame_ms=25),
    ],
)
def test_bad_start_is_refused(start: asr_pb2.Start) -> None:
    with pytest.raises(SessionError):
        StreamParams.from_start(start, AsrConfig())


async def test_admission_queues_then_refuses() -> None:
    admission = Admission(max_sessions=1, queue=1, queue_timeout_s=5)
    order: list[str] = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def session(name: str) -> None:
        async with admission.slot():
            order.append(name)
            first_in.set()
            await release.wait()

    first = asyncio.create_task(session("a"))
    await first_in.wait()
    second = asyncio.create_task(session("b"))
    for _ in range(100):  # let "b" reach the queue
        if admission.waiting:
            break
        await asyncio.sleep(0)
    assert admission.waiting == 1
    with pytest.raises(Busy):
        async with admission.slot():
            pass
    release.set()
    await asyncio.gather(first, second)
    assert order == ["a", "b"] and admission.active == 0


async def test_admission_queue_wait_is_bounded() -> None:
    admission = Admission(max_sessions=1, queue=1, queue_timeout_s=0.05)
    async with admission.slot():
        with pytest.raises(Busy):
            async with admission.slot():
                pass
    assert admission.waiting == 0 and admission.active == 0


async def test_gated_session_decodes_nothing_before_speech_start() -> None:
    engine = FakeEngine()
    frames = [pcm_frame(i) for i in range(50)] + [endpoint(True, 1000)] + [pcm_frame(i) for i in range(50, 80)]
    frames += [endpoint(False, 1500)]
    config = AsrConfig(min_partial_audio_ms=100, speech_preroll_ms=300, speech_tail_ms=100)
    events = await run_session(paced(frames, 0.002), engine, interval_ms=50, config=config, vad_endpoints=True)
    texts = [e for _, e in events if e.type in ("partial", "final")]
    assert texts and all(e.ts[0] == pytest.approx(0.7) for e in texts)
    assert next(e for e in texts if e.type == "final").ts[1] == pytest.approx(1.6)


async def test_gated_session_without_endpoints_decodes_once_at_the_end() -> None:
    """No partial while the VAD says nothing; a stream that ends before any endpoint (a client faster
    than its VAD) gets its kept audio decoded once, the guards deciding."""
    engine = FakeEngine()
    events = await run_session(paced([pcm_frame(i) for i in range(100)], 0.001), engine, vad_endpoints=True)
    assert [(e.type, e.text) for _, e in events] == [("final", "heard 2000 ms"), ("end", "")]
    assert engine.partial_calls == 0


async def test_final_reuses_the_partial_that_decoded_all_of_its_speech() -> None:
    engine = FakeEngine()
    frames = [endpoint(True, 0)] + [pcm_frame(i) for i in range(40)]  # 800 ms

    async def then_end() -> AsyncIterator[asr_pb2.ClientFrame]:
        async for frame in paced(frames, 0.002):
            yield frame
        # a partial decodes all 800 ms before the speech is said to end at 700 ms
        await asyncio.to_thread(wait_for, lambda: engine.partial_samples == 800 * 16, 10, "a partial of 800 ms")
        yield endpoint(False, 700)

    events = await run_session(then_end(), engine, interval_ms=50)
    finals = [e for _, e in events if e.type == "final"]
    assert [f.text for f in finals] == ["heard 800 ms"]  # the partial's decode, not a new one on 700 ms


async def test_first_partials_go_before_updates_and_finals_before_both() -> None:
    scheduler = DecodeScheduler(1)
    order: list[str] = []
    gate = asyncio.Event()

    async def hold() -> None:
        async with scheduler.slot():
            await gate.wait()

    async def partial(name: str, key: tuple[int, float]) -> None:
        async with scheduler.slot(partial_key=key):
            order.append(name)

    async def final(name: str) -> None:
        await scheduler.run(lambda: order.append(name))

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    tasks = [
        asyncio.create_task(partial("update-old", (1, 1.0))),
        asyncio.create_task(partial("first-new", (0, 5.0))),
        asyncio.create_task(partial("first-old", (0, 2.0))),
        asyncio.create_task(final("final")),
    ]
    await asyncio.sleep(0)
    assert scheduler.depth == 4
    gate.set()
    await asyncio.gather(holder, *tasks)
    assert order == ["final", "first-old", "first-new", "update-old"]
    assert scheduler.depth == 0 and scheduler.idle


class KeyRecorder(DecodeScheduler):
    """A scheduler that records the key of every partial asked."""

    def __init__(self) -> None:
        super().__init__(1)
        self.keys: list[tuple[int, float]] = []

    def slot(self, partial_key: tuple[int, float] | None = None):  # type: ignore[no-untyped-def]
        if partial_key is not None:
            self.keys.append(partial_key)
        return super().slot(partial_key)


class SilentAtFirst(FakeEngine):
    """No text for the first `empty` partial decodes (too little speech yet), then the fake's text."""

    def __init__(self, empty: int) -> None:
        super().__init__()
        self.empty = empty

    def transcribe(self, pcm: np.ndarray, lang: str = "", hotwords: tuple[str, ...] = ()) -> Result:
        if self.partial_calls <= self.empty and self.partial_calls:
            return Result("", lang or "en")
        return super().transcribe(pcm, lang, hotwords)


async def test_a_first_partial_tried_again_keeps_its_place_in_line() -> None:
    """Decodes that found no text yet ask again with the time of the utterance's first ask, so the
    utterance waiting longest for its first text goes first; updates ask with the time they ask."""
    scheduler = KeyRecorder()
    frames = [endpoint(True, 0)] + [pcm_frame(i) for i in range(120)] + [endpoint(False, 2400)]
    events = await run_session(paced(frames, 0.005), SilentAtFirst(empty=2), interval_ms=60, scheduler=scheduler)
    assert any(e.type == "partial" for _, e in events)
    firsts = [k for k in scheduler.keys if k[0] == 0]
    updates = [k for k in scheduler.keys if k[0] == 1]
    assert len(firsts) == 3 and len({t for _, t in firsts}) == 1  # two empty tries, then the text
    assert updates and all(u[1] > firsts[0][1] for u in updates)
    assert [t for _, t in updates] == sorted(t for _, t in updates)


def finalize(ms: int) -> asr_pb2.ClientFrame:
    return asr_pb2.ClientFrame(endpoint=asr_pb2.Endpoint(kind=asr_pb2.Endpoint.FINALIZE, pts=ms * MS))


async def test_finalize_answers_one_final_marked_from_finalize() -> None:
    """Finalize mid-speech: the final of the speech so far, marked; the VAD's later end of that
    speech adds nothing; the next utterance is transcribed as usual; a finalize with nothing open
    is answered with an empty final."""
    frames = [endpoint(True, 0)] + [pcm_frame(i) for i in range(50)] + [finalize(1000)]
    frames += [pcm_frame(i) for i in range(50, 60)] + [endpoint(False, 1060)]
    frames += [endpoint(True, 1500)] + [pcm_frame(i) for i in range(60, 110)] + [endpoint(False, 2000)]
    frames += [finalize(2200)]
    events = await run_session(paced(frames, 0), FakeEngine(), interval_ms=1000, vad_endpoints=True)
    finals = [(e.text, [round(x, 3) for x in e.ts], e.from_finalize) for _, e in events if e.type == "final"]
    assert finals == [
        ("heard 1000 ms", [0.0, 1.0], True),
        ("heard 500 ms", [1.5, 2.0], False),
        ("", [2.2, 2.2], True),
    ]
    assert events[-1][1].type == "end"


class FakeWordsEngine(FakeEngine):
    """FakeEngine whose results time two words over the audio it decoded (seconds from its first
    sample) and carry a confidence; counts its decodes."""

    def __init__(self) -> None:
        super().__init__()
        self.decodes = 0

    def transcribe(self, pcm: np.ndarray, lang: str = "", hotwords: tuple[str, ...] = ()) -> Result:
        self.decodes += 1
        result = super().transcribe(pcm, lang, hotwords)
        half = pcm.size / 16000 / 2
        words = (Word("heard", 0.0, half, 0.75), Word("it", half, 2 * half, None))
        return Result(result.text, result.lang, words=words, confidence=0.5)


def word_triples(event: asr_pb2.AsrEvent) -> list[tuple[str, float, float, float | None]]:
    return [
        (w.word, round(w.start, 3), round(w.end, 3), round(w.confidence, 3) if w.HasField("confidence") else None)
        for w in event.words
    ]


async def test_words_and_confidence_go_onto_the_session_timeline() -> None:
    """The engine times words from its audio's first sample; the events carry them from the
    utterance's start (600 ms here), as their `ts`."""
    frames = [endpoint(True, 600), endpoint(False, 1000)] + [pcm_frame(i) for i in range(60)]
    events = await run_session(paced(frames, 0), FakeWordsEngine(), interval_ms=1000)
    (final,) = [e for _, e in events if e.type == "final"]
    assert [round(x, 3) for x in final.ts] == [0.6, 1.0]
    assert word_triples(final) == [("heard", 0.6, 0.8, 0.75), ("it", 0.8, 1.0, None)]
    assert final.HasField("confidence") and final.confidence == 0.5


async def test_a_final_reusing_its_partial_keeps_the_partials_words() -> None:
    """The last partial heard all the speech: the final reuses it, words and confidence included,
    without another decode."""
    engine = FakeWordsEngine()
    frames = [endpoint(True, 0)] + [pcm_frame(i) for i in range(40)]

    async def then_end() -> AsyncIterator[asr_pb2.ClientFrame]:
        async for frame in paced(frames, 0):
            yield frame
        await until(lambda: engine.partial_samples == 40 * 320)  # a partial decoded all 800 ms
        yield endpoint(False, 800)

    events = await run_session(then_end(), engine, interval_ms=50)
    (final,) = [e for _, e in events if e.type == "final"]
    assert engine.decodes == engine.partial_calls  # no decode of its own
    # The words of the 800 ms partial decode (its event may not go out: the end can close the
    # utterance while that decode runs).
    assert word_triples(final) == [("heard", 0.0, 0.4, 0.75), ("it", 0.4, 0.8, None)]
    assert final.confidence == 0.5
