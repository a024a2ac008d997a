"""Word timings, cost and error (docs/performance.md, "Word timings"): `python -m tests.perf.bench_words`.

References with known word boundaries: every word is synthesized alone by espeak-ng (tests.corpus,
trimmed to its first and last 10 ms of speech), and the words are joined with silences of a seeded
random length (0 to `--max-gap-s`), so each word's true start and end are known to the sample.

- cost: CPU seconds (process time, one thread) of each final decode (`Engine.transcribe`) with and
  without `word_timestamps`, median per utterance and the ratio;
- error: each hypothesis word matched to a reference word (difflib on the lowercased words; only
  exact matches count), the absolute start and end error, median and P95 in ms, for the raw
  cross-attention times and after `snap_to_speech` (what the service sends); pocketsphinx's own
  segments as they are.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.asr.config import AsrConfig
from services.asr.engines import Engine, WhisperEngine, build_engine
from services.asr.words import Word, snap_to_speech
from tests.corpus import Utterance, synthesize

SR = 16_000
SENTENCES = (
    "the morning train was late again today",
    "please bring the blue folder to the meeting",
    "our garden needs more water this summer",
    "she painted the kitchen a bright yellow colour",
    "we walked along the river until sunset",
    "the engineer checked every cable twice",
    "a small dog barked at the passing truck",
    "they opened a new bakery near the station",
    "my brother plays guitar in a jazz band",
    "the museum closes early on public holidays",
    "turn left at the second traffic light",
    "several students finished the exam before noon",
)
VOICES = ("en-us", "en-gb")


@dataclass(frozen=True)
class Reference:
    pcm: np.ndarray
    words: tuple[Word, ...]  # the true boundaries


def build_references(max_gap_s: float, seed: int = 7) -> list[Reference]:
    rng = np.random.default_rng(seed)
    clips: dict[tuple[str, str], np.ndarray] = {}
    refs = []
    for i, sentence in enumerate(SENTENCES):
        voice = VOICES[i % len(VOICES)]
        parts, words, at = [np.zeros(int(0.3 * SR), np.float32)], [], 0.3
        for word in sentence.split():
            if (word, voice) not in clips:
                clips[(word, voice)] = synthesize(Utterance(word, "en", voice))
            clip = clips[(word, voice)]
            words.append(Word(word, at, at + clip.size / SR, None))
            gap = int(rng.uniform(0.0, max_gap_s) * SR)
            parts += [clip, np.zeros(gap, np.float32)]
            at += (clip.size + gap) / SR
        parts.append(np.zeros(int(0.3 * SR), np.float32))
        refs.append(Reference(np.concatenate(parts), tuple(words)))
    return refs


def _norm(word: str) -> str:
    return re.sub(r"[^a-z']", "", word.lower())


def boundary_errors(hyp: Sequence[Word], ref: Sequence[Word]) -> tuple[list[float], list[float], int]:
    """|start| and |end| errors in ms of the hypothesis words that match a reference word exactly."""
    matcher = difflib.SequenceMatcher(a=[_norm(w.word) for w in hyp], b=[_norm(w.word) for w in ref], autojunk=False)
    starts, ends, matched = [], [], 0
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            h, r = hyp[block.a + k], ref[block.b + k]
            starts.append(abs(h.start_s - r.start_s) * 1000)
            ends.append(abs(h.end_s - r.end_s) * 1000)
            matched += 1
    return starts, ends, matched


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def cpu_decode(engine: Engine, pcm: np.ndarray) -> tuple[float, tuple[Word, ...], str]:
    t0 = time.process_time()
    result = engine.transcribe(pcm)
    return time.process_time() - t0, result.words, result.text


def bench_whisper(model: str, refs: Sequence[Reference], repeats: int) -> None:
    config = AsrConfig(engine="whisper", model=model)
    engine = build_engine(config)
    assert isinstance(engine, WhisperEngine)
    engine.snap_words = False  # raw cross-attention times here; snapped below, as the service does
    engine.transcribe(refs[0].pcm)  # warm-up
    cost: dict[bool, list[float]] = {False: [], True: []}
    raw_s, raw_e, snap_s, snap_e, matched, total = [], [], [], [], 0, 0
    for ref in refs:
        for on in (False, True):
            engine.word_timestamps = on
            took = []
            for _ in range(repeats):
                seconds, words, _text = cpu_decode(engine, ref.pcm)
                took.append(seconds)
            cost[on].append(min(took))
        s, e, m = boundary_errors(words, ref.words)
        raw_s += s
        raw_e += e
        s, e, _m = boundary_errors(snap_to_speech(words, ref.pcm), ref.words)
        snap_s += s
        snap_e += e
        matched, total = matched + m, total + len(ref.words)
    off, on_ = statistics.median(cost[False]) * 1000, statistics.median(cost[True]) * 1000
    audio_s = statistics.median(r.pcm.size / SR for r in refs)
    print(
        f"whisper {model}: decode CPU per utterance (median, {audio_s:.1f} s audio) without words {off:.0f} ms, "
        f"with words {on_:.0f} ms (x{on_ / off:.2f}); words matched {matched}/{total}"
    )
    for label, s, e in (("raw alignment", raw_s, raw_e), ("snapped (sent)", snap_s, snap_e)):
        print(
            f"  {label:15s} start error median {pct(s, 50):4.0f} ms P95 {pct(s, 95):4.0f} ms | "
            f"end error median {pct(e, 50):4.0f} ms P95 {pct(e, 95):4.0f} ms"
        )


def bench_sphinx(refs: Sequence[Reference]) -> None:
    engine = build_engine(AsrConfig(engine="sphinx"))
    starts, ends, matched, total, took = [], [], 0, 0, []
    for ref in refs:
        seconds, words, _text = cpu_decode(engine, ref.pcm)
        took.append(seconds)
        s, e, m = boundary_errors(words, ref.words)
        starts, ends, matched, total = starts + s, ends + e, matched + m, total + len(ref.words)
    print(
        f"sphinx en-us: decode CPU per utterance (median) {statistics.median(took) * 1000:.0f} ms (segments come "
        f"with every decode); words matched {matched}/{total}; start error median {pct(starts, 50):.0f} ms "
        f"P95 {pct(starts, 95):.0f} ms | end error median {pct(ends, 50):.0f} ms P95 {pct(ends, 95):.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny.en,base")
    parser.add_argument("--sphinx", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--max-gap-s", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=3, help="decodes per case; the least CPU counts")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; {len(SENTENCES)} sentences, gaps 0..{args.max_gap_s} s")
    refs = build_references(args.max_gap_s)
    for model in args.models.split(","):
        bench_whisper(model, refs, args.repeats)
    if args.sphinx:
        bench_sphinx(refs)


if __name__ == "__main__":
    main()
