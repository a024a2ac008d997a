"""ASR engines behind one small interface (issue 3 item 2). All methods block: call them from an
executor, never from the event loop (STYLE §7).

- `Engine.transcribe(pcm)` decodes a whole clip (warm-up, benchmarks).
- `Engine.open_stream()` gives an `EngineStream` for one utterance: `accept()` more audio, `partial()`
  result so far, `finish()` the final result. Whisper re-decodes the buffered utterance; pocketsphinx
  decodes incrementally, so its `partial()` is cheap.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common import models
from common.audio import SAMPLE_RATE
from services.asr import guards
from services.asr import words as word_timing
from services.asr.config import AsrConfig
from services.asr.guards import GuardConfig
from services.asr.window import WindowedDecoder, window_frames
from services.asr.words import Word


@dataclass(frozen=True)
class Result:
    text: str
    lang: str
    refused: str = ""  # the guard that emptied `text` (services/asr/guards.py), "" if none
    # Word timings (seconds from the decoded audio's first sample) and confidences, when the engine
    # gives them (services/asr/words.py); `confidence` is the utterance's, None when unknown.
    words: tuple[Word, ...] = ()
    confidence: float | None = None


class EngineStream(Protocol):
    def accept(self, pcm: np.ndarray) -> None: ...
    def partial(self) -> Result: ...
    def finish(self) -> Result: ...
    def close(self) -> None: ...


class Engine(Protocol):
    name: str
    model: str  # metrics/log label
    supports_hotwords: bool
    incremental: bool  # streams decode as audio comes (finals reuse the stream), else re-decode

    def transcribe(self, pcm: np.ndarray, lang: str = "", hotwords: tuple[str, ...] = ()) -> Result: ...
    def open_stream(self, lang: str = "", hotwords: tuple[str, ...] = ()) -> EngineStream: ...


def float_to_pcm16(pcm: np.ndarray) -> bytes:
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


# Token budget of one windowed decode: speech rarely exceeds ~4 tokens a second (7 on spelled-out
# digits, "1-2-3-..."); a repetition loop would otherwise run to Whisper's 448 tokens (seconds of
# CPU on a short window, measured).
MAX_TOKENS_BASE = 10
MAX_TOKENS_PER_S = 10
FALLBACK_FRAMES = 1000  # 10 s: the first window a short-window loop is decoded again on


def _max_tokens(audio_s: float) -> int:
    return int(MAX_TOKENS_BASE + audio_s * MAX_TOKENS_PER_S)


@dataclass(frozen=True)
class BatchRequest:
    """One session's decode in a batch (`WhisperEngine.transcribe_partials`, `transcribe_finals`)."""

    pcm: np.ndarray
    lang: str = ""
    hotwords: tuple[str, ...] = ()


class WhisperEngine:
    """faster-whisper (CTranslate2, int8) on a non-streaming Whisper model. Audio shorter than
    `final_window_s` (whole clips, finals) or `partial_window_s` (partials) is encoded on that shorter
    window instead of 30 s (services/asr/window.py; 0 = off); a windowed result that looks like a
    repetition loop is decoded again on the normal path (counted in `window_fallbacks`)."""

    name = "whisper"
    supports_hotwords = True
    incremental = False

    def __init__(
        self,
        model_dir: Path,
        label: str,
        default_lang: str,
        cpu_threads: int = 1,
        workers: int = 1,
        beam_size: int = 1,
        partial_window_s: float = 0.0,
        final_window_s: float = 0.0,
        min_window_s: float = 0.0,
        guard: GuardConfig | None = None,
        word_timestamps: bool = True,
    ) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        self.model = label
        self._whisper = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=cpu_threads, num_workers=workers
        )
        self._multilingual = bool(self._whisper.model.is_multilingual)
        self._languages = frozenset(_LANGUAGE_CODES)
        self._default_lang = default_lang
        self._beam_size = beam_size
        self._partial_window = WindowedDecoder(self._whisper, partial_window_s, beam_size)
        self._final_window = WindowedDecoder(self._whisper, final_window_s, beam_size)
        self._min_window_frames = window_frames(min_window_s)  # 0: fixed windows
        self._full_window = WindowedDecoder(self._whisper, 30.0, beam_size)
        self._guard = guard or GuardConfig()
        self.word_timestamps = word_timestamps  # every decode aligns its words (ASR_WORD_TIMESTAMPS)
        self.snap_words = True  # word boundaries moved onto the speech (words.snap_to_speech)
        self._fallbacks_lock = threading.Lock()
        self.window_fallbacks = 0  # windowed decodes redone on the normal path
        self.windowed_decodes = 0
        self.refusals: dict[str, int] = {}  # texts emptied by a guard, by guard

    def _language(self, lang: str) -> str | None:
        if not self._multilingual:
            return "en"
        code = (lang or self._default_lang).split("-")[0].lower()
        return code if code in self._languages else None  # None: the model detects it

    def transcribe(self, pcm: np.ndarray, lang: str = "", hotwords: tuple[str, ...] = ()) -> Result:
        """Whole clip or final: the final window when the audio fits in it, else Whisper's 30 s."""
        return self.decode(pcm, lang, hotwords, self._final_window)

    def transcribe_partial(self, pcm: np.ndarray, lang: str = "", hotwords: tuple[str, ...] = ()) -> Result:
        """Open utterance so far: the partial window when the audio fits in it."""
        return self.decode(pcm, lang, hotwords, self._partial_window)

    def transcribe_partials(self, requests: Sequence[BatchRequest]) -> list[Result]:
        """Several sessions' partials at once (`_transcribe_batch` on the partial window)."""
        return self._transcribe_batch(requests, self._partial_window)

    def transcribe_finals(self, requests: Sequence[BatchRequest]) -> list[Result]:
        """Several sessions' finals at once (`_transcribe_batch` on the final window)."""
        return self._transcribe_batch(requests, self._final_window)

    def _transcribe_batch(self, requests: Sequence[BatchRequest], window: WindowedDecoder) -> list[Result]:
        """Several decodes at once, each as `decode` would do it alone on `window`, guards
        included: the clips that go on the window with one language and one prompt share one
        encoder and one `generate` call on the longest clip's window (shorter ones padded to it;
        measured cheaper than batching only clips of one window size, docs/services/asr.md). The
        clips whose text looks like a loop are decoded again together on the longer windows."""
        results: list[Result | None] = [None] * len(requests)
        groups: dict[tuple[str | None, str | None], list[int]] = {}
        for i, req in enumerate(requests):
            if (req.pcm.size and guards.is_silent(req.pcm, self._guard)) or not window.fits(req.pcm.size):
                results[i] = self.decode(req.pcm, req.lang, req.hotwords, window)  # alone, as today
            else:
                key = (self._language(req.lang), ", ".join(req.hotwords) or None)
                groups.setdefault(key, []).append(i)
        for (language, prompt), members in groups.items():
            pcms = {i: requests[i].pcm for i in members}
            frames = max(self._window_frames(window, pcm.size) for pcm in pcms.values())
            for i, result in self._windowed_batch(pcms, language, prompt, frames).items():
                results[i] = result
        return [r for r in results if r is not None]

    def decode(self, pcm: np.ndarray, lang: str, hotwords: tuple[str, ...], window: WindowedDecoder | None) -> Result:
        """One guarded decode; `window=None` (or audio not shorter than it) takes faster-whisper's own
        path. With a minimum window set, the window is sized to the audio (at least that minimum)."""
        audio_s = pcm.size / SAMPLE_RATE
        if pcm.size and guards.is_silent(pcm, self._guard):
            return self._refused(Result("", self._language(lang) or self._default_lang, "silence"))
        prompt = ", ".join(hotwords) if hotwords else None
        if window is not None and window.fits(pcm.size):
            return self._windowed(pcm, self._language(lang), prompt, self._window_frames(window, pcm.size))
        segments, info = self._whisper.transcribe(
            pcm,
            language=self._language(lang),
            beam_size=self._beam_size,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
            hotwords=prompt,
        )
        kept, refused, logprobs = [], "", []
        words: list[Word] = []
        for seg in segments:
            scores = guards.Scores(seg.no_speech_prob, seg.avg_logprob)
            seg_s = max(seg.end - seg.start, 0.0) or audio_s
            reason = guards.check(seg.text.strip(), seg_s, scores, self._guard)
            if reason is None:
                kept.append(seg.text.strip())
                logprobs.append(seg.avg_logprob)
                if self.word_timestamps:
                    words += self._segment_words(pcm, seg.start, seg.end, seg.tokens, info.language)
            else:
                refused = refused or reason
        text = " ".join(kept).strip()
        reason = guards.check(text, audio_s, guards.Scores(), self._guard)
        if reason is not None:
            text, refused = "", reason
        if not text:
            return self._refused(Result("", info.language, refused))
        confidence = word_timing.utterance_confidence(sum(logprobs) / len(logprobs))
        return Result(text, info.language, "", self._snapped(word_timing.clamp(words, audio_s), pcm), confidence)

    def _segment_words(
        self, pcm: np.ndarray, start_s: float, end_s: float, tokens: Sequence[int], lang: str
    ) -> list[Word]:
        """Word timings of one segment of faster-whisper's own path (at most its 30 s window)."""
        first = int(start_s * SAMPLE_RATE)
        chunk = pcm[first : max(int(end_s * SAMPLE_RATE), first + 1)]
        return [w.shifted(start_s) for w in self._full_window.align(chunk, tokens, lang)]

    def _window_frames(self, window: WindowedDecoder, samples: int) -> int:
        """The window `samples` of audio are decoded on: sized to them when a minimum is set."""
        return window.frames_for(samples, self._min_window_frames) if self._min_window_frames else window.frames

    def _windowed(self, pcm: np.ndarray, language: str | None, prompt: str | None, frames: int) -> Result:
        """A guarded decode on `frames`; a loop on a short window is decoded again on 10 s, then on
        Whisper's 30 s."""
        return self._windowed_batch({0: pcm}, language, prompt, frames)[0]

    def _windowed_batch(
        self, pcms: Mapping[int, np.ndarray], language: str | None, prompt: str | None, frames: int
    ) -> dict[int, Result]:
        """`_windowed` of several clips, each attempt one batched decode of the clips still looping."""
        results: dict[int, Result] = {}
        pending = dict(pcms)
        attempts = [frames] + [f for f in (FALLBACK_FRAMES, self._full_window.frames) if f > frames]
        for n, attempt in enumerate(attempts):
            # A loop stops at the token budget of the audio instead of Whisper's 448 tokens (seconds).
            budgets = [_max_tokens(pcm.size / SAMPLE_RATE) for pcm in pending.values()]
            batch = self._full_window.decode_batch(
                list(pending.values()), language, prompt, attempt, budgets, self.word_timestamps
            )
            for (i, pcm), decoded in zip(list(pending.items()), batch, strict=True):
                audio_s = pcm.size / SAMPLE_RATE
                scores = guards.Scores(decoded.no_speech_prob, decoded.avg_logprob)
                refused = "repeats" if decoded.truncated else guards.check(decoded.text, audio_s, scores, self._guard)
                looped = refused in ("compression", "repeats", "rate")
                with self._fallbacks_lock:
                    self.windowed_decodes += n == 0
                    self.window_fallbacks += looped and n == 0
                if not looped or n == len(attempts) - 1:
                    if refused:
                        results[i] = self._refused(Result("", decoded.lang, refused))
                    else:
                        confidence = word_timing.utterance_confidence(decoded.avg_logprob)
                        words = self._snapped(decoded.words, pcm)
                        results[i] = Result(decoded.text, decoded.lang, "", words, confidence)
                    del pending[i]
            if not pending:
                break
        return results

    def _snapped(self, words: tuple[Word, ...], pcm: np.ndarray) -> tuple[Word, ...]:
        return word_timing.snap_to_speech(words, pcm) if self.snap_words else words

    def _refused(self, result: Result) -> Result:
        if result.refused:
            with self._fallbacks_lock:
                self.refusals[result.refused] = self.refusals.get(result.refused, 0) + 1
        return result

    def open_stream(self, lang: str = "", hotwords: tuple[str, ...] = ()) -> EngineStream:
        return _BufferedStream(self, lang, hotwords)


class _BufferedStream:
    """Streaming on a non-streaming model: keep the utterance, re-decode it for partials."""

    def __init__(self, engine: WhisperEngine, lang: str, hotwords: tuple[str, ...]) -> None:
        self._engine, self._lang, self._hotwords = engine, lang, hotwords
        self._chunks: list[np.ndarray] = []

    def accept(self, pcm: np.ndarray) -> None:
        self._chunks.append(pcm)

    def _audio(self) -> np.ndarray:
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)

    def partial(self) -> Result:
        return self._engine.transcribe_partial(self._audio(), self._lang, self._hotwords)

    def finish(self) -> Result:
        return self._engine.transcribe(self._audio(), self._lang, self._hotwords)

    def close(self) -> None:
        self._chunks.clear()


class SphinxEngine:
    """pocketsphinx with its bundled en-us model: a true incremental decoder. Decoders (one per open
    utterance) are pooled: creating one loads the model (~0.3 s). Hotwords are not supported: its
    keyphrase search replaces the language model instead of biasing it."""

    name = "sphinx"
    model = "sphinx-en-us"
    supports_hotwords = False
    incremental = True

    def __init__(self, guard: GuardConfig | None = None) -> None:
        self.guard = guard or GuardConfig()
        self._pool: list[Any] = []
        self._lock = threading.Lock()
        first = self._acquire()  # load once now
        self._initial_cmn: str = first.get_cmn()
        self._release(first)

    def _acquire(self) -> Any:
        with self._lock:
            if self._pool:
                return self._pool.pop()
        from pocketsphinx import Decoder

        return Decoder(samprate=16000, loglevel="FATAL")

    def _release(self, decoder: Any) -> None:
        with self._lock:
            self._pool.append(decoder)

    def transcribe(self, pcm: np.ndarray, lang: str = "", hotwords: tuple[str, ...] = ()) -> Result:
        stream = self.open_stream(lang, hotwords)
        stream.accept(pcm)
        return stream.finish()

    def open_stream(self, lang: str = "", hotwords: tuple[str, ...] = ()) -> EngineStream:
        return _SphinxStream(self)


class _SphinxStream:
    def __init__(self, engine: SphinxEngine) -> None:
        self._engine = engine
        self._decoder: Any = engine._acquire()
        # Pooled decoders adapt their cepstral mean; start each utterance from the model's own so
        # one session's audio never shifts another's result.
        self._decoder.set_cmn(engine._initial_cmn)
        self._decoder.start_utt()
        self._in_utt = True
        self._samples = 0
        self._sum_sq = 0.0  # for the silence guard over the whole utterance

    def accept(self, pcm: np.ndarray) -> None:
        if pcm.size:
            self._samples += pcm.size
            self._sum_sq += float(np.sum(np.square(pcm, dtype=np.float64)))
            self._decoder.process_raw(float_to_pcm16(pcm), False, False)

    def _guarded(self) -> Result:
        """The hypothesis so far through the guards that apply to pocketsphinx (no scores)."""
        if not self._samples:
            return Result("", "en")
        rms = (self._sum_sq / self._samples) ** 0.5
        if rms <= 0 or 20 * np.log10(rms) < self._engine.guard.min_rms_dbfs:
            return Result("", "en", "silence")
        hyp = self._decoder.hyp()
        text = hyp.hypstr if hyp is not None else ""
        refused = guards.check(text, self._samples / SAMPLE_RATE, guards.Scores(), self._engine.guard)
        return Result("", "en", refused) if refused else Result(text, "en")

    def partial(self) -> Result:
        return self._guarded()

    def finish(self) -> Result:
        """The final, with pocketsphinx's own word segmentation (its 10 ms frames) and posteriors."""
        self._decoder.end_utt()
        self._in_utt = False
        result = self._guarded()
        if result.text:
            found = word_timing.from_sphinx(self._decoder.seg())
            result = Result(result.text, result.lang, "", word_timing.clamp(found, self._samples / SAMPLE_RATE))
        self.close()
        return result

    def close(self) -> None:
        """Give the decoder back to the pool (idempotent)."""
        if self._decoder is None:
            return
        if self._in_utt:
            self._decoder.end_utt()
            self._in_utt = False
        decoder, self._decoder = self._decoder, None
        self._engine._release(decoder)


def build_engine(config: AsrConfig) -> Engine:
    """The engine this process serves, from installed model packages only (SPEC §9)."""
    if config.engine == "sphinx":
        return SphinxEngine(config.guard)
    model_dir = models.whisper_tiny_en_dir() if config.model == "tiny.en" else models.whisper_base_dir()
    return WhisperEngine(
        model_dir,
        config.model_label,
        config.lang,
        config.cpu_threads,
        config.decode_workers,
        config.beam_size,
        config.partial_window_s,
        config.final_window_s,
        config.min_window_s,
        config.guard,
        config.word_timestamps,
    )
