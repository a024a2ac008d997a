"""Cuts the session timeline into utterances, sans-I/O (SPEC §4).

Audio arrives in timeline order (after the reorder window); `Endpoint` frames from the orchestrator's
VAD open and close utterances at a `pts` in ns. An endpoint ahead of the audio waits for the audio.
An utterance longer than `max_utterance_ms` is cut there and continues as a new one. Until the first
endpoint the stream counts as speech from its first sample (a client without VAD still gets text);
the first SPEECH_START moves that implicit utterance's start to its pts.

Gated (`gated=True`, the client said endpoints will come): there is no implicit utterance; audio
outside [SPEECH_START - speech_preroll_ms, SPEECH_END + speech_tail_ms) is never part of an
utterance, so silence and noise before, between and after speech are not decoded. Pre-roll and tail
apply in both modes; an utterance never starts before the previous one ended.

A FINALIZE endpoint (the client's `finalize`) closes the open utterance at its pts exactly, without
tail, and always yields one utterance marked `finalized` (empty when nothing was open, so every
finalize gets its answer). If the speech goes on (the VAD has not ended it, or no endpoint came yet
and the stream is not gated) a continuation opens at that pts; when the VAD's SPEECH_END then finds
less than `min_continuation_ms` of speech after the finalize, the continuation is dropped, so the
utterance the client finalized is not answered twice.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from common.audio import NS_PER_S


@dataclass(frozen=True)
class Utterance:
    """A closed utterance: float32 audio in [-1, 1] covering [start_ns, end_ns)."""

    index: int
    start_ns: int
    end_ns: int
    pcm: np.ndarray
    forced: bool = False  # cut by max length or flush rather than SPEECH_END
    speech_end_ns: int | None = None  # SPEECH_END's own pts (before the tail) when it closed this
    finalized: bool = False  # closed by a FINALIZE endpoint (the client's `finalize`)

    @property
    def ts(self) -> tuple[float, float]:
        return self.start_ns / NS_PER_S, self.end_ns / NS_PER_S


@dataclass(frozen=True)
class OpenUtterance:
    index: int
    start_ns: int
    end_ns: int
    pcm: np.ndarray


@dataclass
class UtteranceSegmenter:
    sample_rate: int = 16_000
    max_utterance_ms: int = 25_000
    preroll_ms: int = 2_000
    gated: bool = False
    speech_preroll_ms: int = 0
    speech_tail_ms: int = 0
    min_continuation_ms: int = 0
    _store: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    _n: int = 0  # samples of _store in use; _store grows by doubling (appends are amortised O(1))
    _buf_start_ns: int | None = None
    _open_start_ns: int | None = None
    _implicit: bool = False
    _seen_endpoint: bool = False
    _index: int = 0
    _pending: deque[tuple[str, int, int]] = field(default_factory=deque)  # (kind, pts_ns, raw pts)
    _in_speech: bool = False  # the last endpoint applied was SPEECH_START
    _continues_from: int | None = None  # the open utterance goes on from a FINALIZE at this pts
    _last_end_ns: int = -(2**62)
    _decided_ns: int | None = None  # gated: the VAD has decided the audio before this (last endpoint)

    @property
    def cursor_ns(self) -> int | None:
        """End of the audio received so far."""
        if self._buf_start_ns is None:
            return None
        return self._buf_start_ns + self._samples_to_ns(self._n)

    @property
    def open(self) -> OpenUtterance | None:
        """The utterance in progress with its audio so far (for partials)."""
        if self._open_start_ns is None or self._buf_start_ns is None:
            return None
        cursor = self.cursor_ns
        assert cursor is not None
        return OpenUtterance(self._index, self._open_start_ns, cursor, self._store[: self._n])

    def push_audio(self, start_ns: int, pcm: np.ndarray) -> list[Utterance]:
        """Append audio starting at `start_ns` (contiguous with what came before)."""
        if self._buf_start_ns is None:
            self._buf_start_ns = start_ns
            if not self._seen_endpoint and not self.gated:
                self._open_start_ns, self._implicit = start_ns, True
        need = self._n + pcm.size
        if need > self._store.size:
            grown = np.empty(max(need, 2 * self._store.size, self.sample_rate), np.float32)
            grown[: self._n] = self._store[: self._n]
            self._store = grown
        self._store[self._n : need] = pcm
        self._n = need
        return self._advance(flush=False)

    def push_endpoint(self, is_start: bool, pts_ns: int) -> list[Utterance]:
        self._seen_endpoint = True
        raw = pts_ns
        if is_start:
            pts_ns = max(pts_ns - self.speech_preroll_ms * 1_000_000, 0)
        else:
            pts_ns += self.speech_tail_ms * 1_000_000
        self._decided_ns = max(self._decided_ns or 0, pts_ns)
        return self._queue("start" if is_start else "end", pts_ns, raw)

    def push_finalize(self, pts_ns: int) -> list[Utterance]:
        """The client's `finalize` at `pts_ns` (the audio it had sent): close the open utterance there."""
        return self._queue("finalize", pts_ns, pts_ns)

    def _queue(self, kind: str, pts_ns: int, raw: int) -> list[Utterance]:
        if self._pending and pts_ns < self._pending[-1][1]:
            pts_ns = self._pending[-1][1]  # keep the endpoints monotonic on the timeline
        self._pending.append((kind, pts_ns, raw))
        return self._advance(flush=False)

    def flush(self) -> list[Utterance]:
        """End of stream: apply every endpoint, close the open utterance at the end of the audio."""
        return self._advance(flush=True)

    def _advance(self, flush: bool) -> list[Utterance]:
        out: list[Utterance] = []
        cursor = self.cursor_ns
        if cursor is None:
            if flush:
                self._pending.clear()
            return out
        max_ns = self.max_utterance_ms * 1_000_000
        while True:
            limit = cursor
            if self._pending and (self._pending[0][1] <= cursor or flush):
                limit = min(cursor, self._pending[0][1])
            if self._open_start_ns is not None and self._open_start_ns + max_ns < limit:
                cut = self._open_start_ns + max_ns
                out.append(self._close(cut, forced=True))
                self._open(cut)
                continue
            if not self._pending or (self._pending[0][1] > cursor and not flush):
                break
            kind, pts, raw = self._pending.popleft()
            pts = min(pts, cursor)
            if kind == "finalize":
                out.append(self._finalize(pts))
            elif kind == "start":
                self._in_speech = True
                if self._implicit:
                    self._implicit = False
                    self._index += 1  # the implicit utterance is dropped, not finalised
                    self._open(pts)
                elif self._open_start_ns is None:
                    self._open(pts)
            else:
                self._in_speech = False
                if self._open_start_ns is None:
                    continue
                self._implicit = False
                since = self._continues_from
                if since is not None and raw - since < self.min_continuation_ms * 1_000_000:
                    self._drop_open()  # the finalized speech's own end: no second answer
                else:
                    out.append(self._close(max(pts, self._open_start_ns), forced=False, speech_end_ns=raw))
        if flush and self.gated and not self._seen_endpoint and self._n:
            # The stream ended before its VAD said anything (a client faster than its VAD): the kept
            # audio is decoded once, the hallucination guards deciding.
            assert self._buf_start_ns is not None
            self._open(self._buf_start_ns)
        if flush and self._open_start_ns is not None:
            out.append(self._close(cursor, forced=True))
        if self._open_start_ns is None:
            keep_from = cursor - self.preroll_ms * 1_000_000
            if self.gated:  # keep what the VAD has not decided yet, at most one utterance's length
                decided = self._decided_ns if self._decided_ns is not None else (self._buf_start_ns or 0)
                keep_from = min(keep_from, max(decided - self.speech_preroll_ms * 1_000_000, cursor - max_ns))
            self._trim(keep_from)
        return out

    def _finalize(self, pts: int) -> Utterance:
        if self._open_start_ns is None:
            return Utterance(self._index, pts, pts, np.zeros(0, np.float32), forced=True, finalized=True)
        implicit = self._implicit
        utt = self._close(max(pts, self._open_start_ns), forced=True, finalized=True)
        if implicit or self._in_speech:
            # The speech goes on past the finalize: hear the rest as a new utterance.
            self._open(utt.end_ns)
            self._implicit = implicit
            self._continues_from = None if implicit else utt.end_ns
        return utt

    def _drop_open(self) -> None:
        self._open_start_ns = None
        self._continues_from = None
        self._index += 1

    def _open(self, start_ns: int) -> None:
        assert self._buf_start_ns is not None
        start_ns = max(start_ns, self._buf_start_ns, self._last_end_ns)
        self._trim(start_ns)
        self._open_start_ns = start_ns
        self._continues_from = None

    def _close(self, end_ns: int, forced: bool, speech_end_ns: int | None = None, finalized: bool = False) -> Utterance:
        assert self._open_start_ns is not None and self._buf_start_ns is not None
        start = self._open_start_ns
        n = self._ns_to_samples(end_ns - self._buf_start_ns)
        first = self._ns_to_samples(start - self._buf_start_ns)
        pcm = self._store[first:n].copy()
        utt = Utterance(self._index, start, end_ns, pcm, forced, speech_end_ns, finalized)
        self._last_end_ns = end_ns
        self._index += 1
        self._open_start_ns = None
        self._continues_from = None
        self._implicit = False
        return utt

    def _trim(self, keep_from_ns: int) -> None:
        assert self._buf_start_ns is not None
        drop = self._ns_to_samples(keep_from_ns - self._buf_start_ns)
        if drop > 0:
            drop = min(drop, self._n)
            self._store = self._store[drop:]  # a view: old samples are freed on the next growth
            self._n -= drop
            self._buf_start_ns += self._samples_to_ns(drop)

    def _samples_to_ns(self, n: int) -> int:
        return n * NS_PER_S // self.sample_rate

    def _ns_to_samples(self, ns: int) -> int:
        return ns * self.sample_rate // NS_PER_S
