"""The SLO latencies of one session as the gateway sees them (SPEC §6), for Prometheus.

A metrics adapter beside the sans-I/O core: the driver tells it when audio arrived, and hands it the
VAD boundaries and transcripts it already reports to the session; the core knows nothing of it.

- First partial: from the wall time the session's first speech sample (the VAD's first speech start,
  which includes the VAD's `pad_start_ms`) reached the gateway to the first `asr_partial`.
- Final lag: from the wall time the audio at a VAD speech end (end of speech + `pad_end_ms`) reached
  the gateway to the first `asr_final` of that utterance.

Both are observed per ASR pool (the pool whose stream produced the transcript). Arrival times come
from a short history of marks, one per `MARK_BYTES` of audio received, so the hot path costs an
addition and a comparison per client message.
"""

from __future__ import annotations

from collections import deque

from common.audio import BYTES_PER_S
from orchestrator import metrics
from orchestrator.core.events import SpeechBoundary, Transcript

MARK_BYTES = BYTES_PER_S // 10  # one arrival mark per 100 ms of audio
MAX_MARKS = 128  # 12.8 s of audio: the VAD answers well within that (STAGE_BACKLOG_SEC, 10 s, holds a lagging one)
UNKNOWN_POOL = "unknown"  # a transcript from a stage that names no pool (in-process test stages)


class SpeechLatencyProbe:
    """Per session: audio arrival marks, the first speech start and the speech ends awaiting a final."""

    __slots__ = (
        "_bytes",
        "_ends",
        "_first_partial",
        "_first_speech_at",
        "_last_at",
        "_marks",
        "_next_mark",
        "_observed",
    )

    def __init__(self) -> None:
        self._bytes = 0
        self._next_mark = 0
        self._last_at = 0.0  # when the latest message came
        # (bytes before the message, bytes after it, when it came) of every message that crossed a mark
        self._marks: deque[tuple[int, int, float]] = deque(maxlen=MAX_MARKS)
        self._first_speech_at: float | None = None
        self._first_partial: tuple[float, str] | None = None  # (when, pool); None until seen
        self._ends: deque[tuple[float, float]] = deque()  # (speech end on the timeline in s, arrival)
        self._observed = False  # the first partial's latency is observed once per session

    def on_audio(self, n_bytes: int, now: float) -> None:
        """`n_bytes` of audio reached the gateway at `now` (one client message)."""
        start = self._bytes
        self._bytes += n_bytes
        self._last_at = now
        if self._bytes >= self._next_mark:
            self._marks.append((start, self._bytes, now))
            self._next_mark = self._bytes - self._bytes % MARK_BYTES + MARK_BYTES

    def on_boundary(self, event: SpeechBoundary) -> None:
        arrival = self.arrival_of(event.pts_ns * BYTES_PER_S // 1_000_000_000)
        if arrival is None:
            return
        if event.kind == "start":
            if self._first_speech_at is None:
                self._first_speech_at = arrival
                self._observe_first_partial()
        else:
            self._ends.append((event.pts_ns / 1e9, arrival))

    def on_transcript(self, event: Transcript, now: float) -> None:
        pool = event.pool or UNKNOWN_POOL
        if not event.final:
            if self._first_partial is None:
                self._first_partial = (now, pool)
                self._observe_first_partial()
            return
        ends = self._ends
        while ends and ends[0][0] < event.start_s:  # ends of utterances that got no final
            ends.popleft()
        if ends:
            _, arrival = ends.popleft()
            metrics.FINAL_LAG.labels(pool).observe(max(0.0, now - arrival) * 1000)

    def arrival_of(self, offset: int) -> float | None:
        """When the byte at `offset` of the session's audio reached the gateway (None before any audio).
        Lookups come in timeline order, so marks before the asked offset are dropped as it goes."""
        marks = self._marks
        if not marks:
            return None
        floor = None
        while len(marks) > 1 and marks[0][1] <= offset:
            floor = marks.popleft()[2]
        start, end, at = marks[0]
        if start <= offset < end:
            return at  # in the marked message itself
        if end <= offset:  # after the last mark: date it back from the latest message instead
            floor, end, at = at, self._bytes, self._last_at
        # A real-time client sent the audio from the offset to `end` in as much time before `at`;
        # never before the previous mark (a faster client's audio came in a burst).
        back = at - max(0, end - offset) / BYTES_PER_S
        return back if floor is None else max(floor, back)

    def _observe_first_partial(self) -> None:
        if self._observed or self._first_speech_at is None or self._first_partial is None:
            return
        self._observed = True
        at, pool = self._first_partial
        metrics.FIRST_PARTIAL_LATENCY.labels(pool).observe(max(0.0, at - self._first_speech_at) * 1000)
