"""Test audio with known content, made here: espeak-ng speech (several voices and languages) placed on a
timeline after a lead-in of silence or noise, with pauses between utterances, plus a non-speech set
(silence, hum, white/pink/brown noise at several levels, clicks, tones, music-like chords).

Every case knows its reference text and where its speech lies on the timeline (from the synthesised
clip itself: the first and last 10 ms window within 40 dB of the clip's peak), so latency can be
measured from the first speech sample. Generation is deterministic (fixed seeds, fixed voices) and
cached as 16 kHz mono PCM16 WAV plus a JSON sidecar under `SPEECHGW_CORPUS_DIR` (default
`var/corpus` in the repository). Used by tests/perf/bench_live.py and tests/e2e/test_live.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

SR = 16000
ROOT = Path(__file__).resolve().parents[1]
SPEECH_PEAK_DBFS = -3.0
ONSET_BELOW_PEAK_DB = 40.0
GENERATOR = 2  # bump when the rendering changes: the cache key includes it
WORDS_PER_MINUTE = 140  # espeak-ng's default 175 costs Whisper tiny.en many words

# Everyday English sentences, written for this corpus. The held-out set uses other sentences and voices.
EN_SENTENCES = (
    "Please call me back when you get home tonight.",
    "The meeting has been moved to Thursday afternoon.",
    "I would like a cup of coffee with milk.",
    "We need to buy bread, eggs and cheese.",
    "The weather will be sunny and warm tomorrow.",
    "Can you send me the report before lunch?",
    "My train leaves the station at seven thirty.",
    "She found her keys under the kitchen table.",
    "The children are playing in the garden.",
    "He works at the hospital near the river.",
    "Turn left at the next corner and keep going.",
    "Our flight was delayed by almost two hours.",
    "The new phone has a very good camera.",
    "Let us meet at the cafe next to the library.",
    "I forgot to water the plants last week.",
    "The shop closes early on Sunday evenings.",
    "Could you open the window a little bit?",
    "They are moving to a bigger house in June.",
    "The doctor said I should rest for a few days.",
    "We watched a funny movie on Friday night.",
)
HELD_OUT_SENTENCES = (
    "The bus to the airport runs every twenty minutes.",
    "I left my umbrella in the office this morning.",
    "Dinner will be ready in about half an hour.",
    "The music at the party was far too loud.",
)
OTHER_SENTENCES = {
    "es": ("El perro corre por el parque todas las mañanas.", "Mi hermana vive en una casa grande."),
    "de": ("Der Zug fährt um acht Uhr vom Bahnhof ab.", "Wir trinken am Abend gern einen Tee."),
    "fr": ("Nous allons au marché le samedi matin.", "Le chat dort sur le canapé du salon."),
}
EN_VOICES = ("en-us", "en-gb", "en-us+m3", "en-gb+f2", "en-us+f3", "en-gb-x-rp")
HELD_OUT_VOICES = ("en-us-nyc+m5", "en-gb-scotland+f4")
OTHER_VOICES = {"es": "es", "de": "de", "fr": "fr-fr"}


@dataclass(frozen=True)
class Utterance:
    text: str
    lang: str
    voice: str


@dataclass(frozen=True)
class SpeechSpec:
    """A speech session: lead-in, utterances separated by pauses, a tail; `background` plays throughout."""

    name: str
    utterances: tuple[Utterance, ...]
    lead_in_s: float
    pauses_s: tuple[float, ...] = ()
    tail_s: float = 0.5
    background: str = "silence"  # a NoiseSpec kind
    background_dbfs: float = -120.0
    seed: int = 0


@dataclass(frozen=True)
class NoiseSpec:
    """A non-speech clip: silence, white, pink, brown, hum, clicks, tone or chords at an RMS level."""

    name: str
    kind: str
    duration_s: float = 4.0
    level_dbfs: float = -30.0
    seed: int = 0


@dataclass(frozen=True)
class Segment:
    """One utterance on the session timeline, in seconds."""

    start_s: float
    end_s: float
    text: str
    lang: str


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    lang: str  # the language spoken ("" for non-speech)
    duration_s: float
    segments: tuple[Segment, ...] = field(default_factory=tuple)

    @property
    def is_speech(self) -> bool:
        return bool(self.segments)

    @property
    def speech_start_s(self) -> float:
        return self.segments[0].start_s

    @property
    def speech_end_s(self) -> float:
        return self.segments[-1].end_s

    @property
    def reference(self) -> str:
        return " ".join(s.text for s in self.segments)

    def pcm(self) -> bytes:
        with wave.open(str(self.path), "rb") as w:
            return w.readframes(w.getnframes())


def corpus_dir() -> Path:
    return Path(os.environ.get("SPEECHGW_CORPUS_DIR", str(ROOT / "var" / "corpus")))


@cache
def _espeak_version() -> str:
    return subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout.strip()


def synthesize(utt: Utterance) -> np.ndarray:
    """espeak-ng at WORDS_PER_MINUTE, resampled by sox to 16 kHz mono; float32, peak at SPEECH_PEAK_DBFS, trimmed
    to its first and last speech window."""
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        raw, out = Path(tmp) / "raw.wav", Path(tmp) / "out.wav"
        subprocess.run(
            ["espeak-ng", "-v", utt.voice, "-s", str(WORDS_PER_MINUTE), "-w", str(raw), utt.text], check=True
        )
        subprocess.run(
            ["sox", "-V1", "-G", str(raw), "-r", str(SR), "-c", "1", "-b", "16", "-e", "signed", str(out)], check=True
        )
        x = _read_wav(out)
    win = SR // 100
    frames = x[: len(x) // win * win].reshape(-1, win)
    db = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-9)
    voiced = np.flatnonzero(db > db.max() - ONSET_BELOW_PEAK_DB)
    x = x[voiced[0] * win : (voiced[-1] + 1) * win]
    return (x / np.abs(x).max() * 10 ** (SPEECH_PEAK_DBFS / 20)).astype(np.float32)


def noise(kind: str, n: int, level_dbfs: float, seed: int) -> np.ndarray:
    """`n` samples of a non-speech signal at an RMS of `level_dbfs` (silence is digital zero)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    if kind == "silence":
        return np.zeros(n, np.float32)
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind in ("pink", "brown"):
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / SR)
        f[0] = f[1]
        spec /= np.sqrt(f) if kind == "pink" else f
        x = np.fft.irfft(spec, n)
    elif kind == "hum":  # mains hum: 50 Hz and its odd harmonics
        x = np.sum([np.sin(2 * np.pi * 50 * k * t) / k for k in (1, 3, 5, 7)], axis=0)
    elif kind == "clicks":  # sharp decaying clicks at random moments, ~3 per second
        x = np.zeros(n)
        for at in rng.integers(0, max(1, n - 160), size=max(1, int(3 * n / SR))):
            x[at : at + 160] += rng.choice([-1.0, 1.0]) * np.exp(-np.arange(160) / 20.0)
    elif kind.startswith("tone"):  # "tone440": a steady sine
        x = np.sin(2 * np.pi * float(kind[4:] or 440) * t)
    elif kind == "sweep":  # a sine gliding from 200 Hz to 3 kHz over the clip
        dur = max(n / SR, 1 / SR)
        x = np.sin(2 * np.pi * (200 * t + (3000 - 200) * t**2 / (2 * dur)))
    elif kind == "babble":  # speech-shaped noise with syllable-rate bursts of 6 talkers, no words in it
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / SR)
        shaped = np.fft.irfft(spec * np.exp(-(((np.log(f + 1) - np.log(800)) / 1.0) ** 2)), n)
        env = sum(0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6.3)) for _ in range(6))
        x = shaped * env
    elif kind == "chords":  # music-like: triads with overtones, a new chord every 0.5 s
        x = np.zeros(n)
        roots = (261.63, 349.23, 392.0, 220.0)
        step = SR // 2
        for i, at in enumerate(range(0, n, step)):
            seg = t[at : at + step] - t[at]
            env = np.exp(-seg * 3.0)
            for ratio in (1.0, 1.26, 1.5):
                for h in (1, 2, 3):
                    x[at : at + step] += env * np.sin(2 * np.pi * roots[i % 4] * ratio * h * seg) / h
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    x = np.asarray(x, dtype=np.float64)
    rms = float(np.sqrt((x**2).mean())) or 1.0
    return (x / rms * 10 ** (level_dbfs / 20)).astype(np.float32)


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def _write_wav(path: Path, x: np.ndarray) -> None:
    pcm = (np.clip(x, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm)
    tmp.replace(path)  # atomic: a benchmark and a test may build the same case at once


def _render_speech(spec: SpeechSpec) -> tuple[np.ndarray, list[Segment]]:
    clips = [synthesize(u) for u in spec.utterances]
    pauses = list(spec.pauses_s) + [0.0] * len(clips)
    segments, at = [], spec.lead_in_s
    for i, (utt, clip) in enumerate(zip(spec.utterances, clips, strict=True)):
        segments.append(Segment(round(at, 4), round(at + len(clip) / SR, 4), utt.text, utt.lang))
        at += len(clip) / SR + (pauses[i] if i < len(clips) - 1 else 0.0)
    total = round((at + spec.tail_s) * SR)
    x = noise(spec.background, total, spec.background_dbfs, spec.seed)
    for seg, clip in zip(segments, clips, strict=True):
        start = round(seg.start_s * SR)
        x[start : start + len(clip)] += clip
    return x, segments


def build(spec: SpeechSpec | NoiseSpec) -> Case:
    """The case for `spec`, from the cache when present."""
    key = hashlib.sha256(
        json.dumps(
            [asdict(spec), _espeak_version(), WORDS_PER_MINUTE, SPEECH_PEAK_DBFS, GENERATOR], sort_keys=True
        ).encode()
    ).hexdigest()[:12]
    folder = corpus_dir()
    folder.mkdir(parents=True, exist_ok=True)
    wav, meta = folder / f"{spec.name}-{key}.wav", folder / f"{spec.name}-{key}.json"
    if not (wav.exists() and meta.exists()):
        if isinstance(spec, SpeechSpec):
            x, segments = _render_speech(spec)
            lang = spec.utterances[0].lang
        else:
            x, segments, lang = noise(spec.kind, int(spec.duration_s * SR), spec.level_dbfs, spec.seed), [], ""
        _write_wav(wav, x)
        tmp = meta.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"lang": lang, "duration_s": len(x) / SR, "segments": [asdict(s) for s in segments]}))
        tmp.replace(meta)
    info = json.loads(meta.read_text())
    segs = tuple(Segment(**s) for s in info["segments"])
    return Case(spec.name, wav, info["lang"], info["duration_s"], segs)


# ----- the sets -----

_BACKGROUNDS = (("silence", -120.0), ("white", -55.0), ("pink", -50.0), ("brown", -45.0), ("hum", -50.0))
_LEAD_INS_S = (1.0, 0.0, 2.0, 0.5, 3.0, 1.5, 2.5, 0.25, 1.0, 2.0, 0.5, 3.0)
_PAUSES_S = (0.6, 1.0, 1.5, 2.0)
# Positions in the main set that speak another language (the multi pool's share under LID routing).
_OTHER_AT = {5: "es", 8: "de", 11: "fr"}


def main_specs(utterances_per_session: int = 2) -> list[SpeechSpec]:
    """Twelve sessions: English in six voices, and Spanish, German, French; lead-ins of 0-3 s of
    silence or noise (the noise stays under the speech), pauses of 0.6-2 s."""
    specs = []
    for i, lead_in in enumerate(_LEAD_INS_S):
        if i in _OTHER_AT:
            lang = _OTHER_AT[i]
            texts = OTHER_SENTENCES[lang][:utterances_per_session]
            utts = tuple(Utterance(t, lang, OTHER_VOICES[lang]) for t in texts)
        else:
            voice = EN_VOICES[i % len(EN_VOICES)]
            texts = tuple(EN_SENTENCES[(i * 2 + k) % len(EN_SENTENCES)] for k in range(utterances_per_session))
            utts = tuple(Utterance(t, "en", voice) for t in texts)
        bg, level = _BACKGROUNDS[i % len(_BACKGROUNDS)]
        name = f"main{i:02d}-{utts[0].lang}-{bg}{lead_in:g}s"
        pauses = tuple(_PAUSES_S[(i + k) % len(_PAUSES_S)] for k in range(len(utts) - 1))
        specs.append(SpeechSpec(name, utts, lead_in, pauses, 0.5, bg, level, seed=100 + i))
    return specs


def held_out_specs(utterances_per_session: int = 2) -> list[SpeechSpec]:
    """English in voices and sentences the main set never uses."""
    specs = []
    for i, voice in enumerate(HELD_OUT_VOICES):
        texts = HELD_OUT_SENTENCES[i * 2 : i * 2 + utterances_per_session]
        utts = tuple(Utterance(t, "en", voice) for t in texts)
        bg, level = (("silence", -120.0), ("pink", -50.0))[i % 2]
        name = f"heldout{i}-en-{bg}{1.5 + i:g}s"
        specs.append(SpeechSpec(name, utts, 1.5 + i, (1.0,) * (len(utts) - 1), 0.5, bg, level, seed=200 + i))
    return specs


def nonspeech_specs(duration_s: float = 4.0) -> list[NoiseSpec]:
    """Silence, hum, white/pink/brown noise at three levels, clicks, tones and chords."""
    specs = [NoiseSpec("silence", "silence", duration_s, -120.0)]
    for kind in ("white", "pink", "brown"):
        specs += [NoiseSpec(f"{kind}{lvl}", kind, duration_s, float(lvl), seed=7) for lvl in (-50, -35, -20)]
    specs += [
        NoiseSpec("hum-35", "hum", duration_s, -35.0),
        NoiseSpec("clicks-30", "clicks", duration_s, -30.0, seed=3),
        NoiseSpec("tone440-20", "tone440", duration_s, -20.0),
        NoiseSpec("tone1000-30", "tone1000", duration_s, -30.0),
        NoiseSpec("chords-20", "chords", duration_s, -20.0),
    ]
    return specs


def long_spec(minutes: float) -> SpeechSpec:
    """English speech with 1-3 s pauses over `minutes`, in light pink noise: the long-session row."""
    rng = np.random.default_rng(42)
    utts: list[Utterance] = []
    pauses: list[float] = []
    est_s = 1.0
    while est_s < minutes * 60 - 4.0:
        k = len(utts)
        utts.append(Utterance(EN_SENTENCES[k % len(EN_SENTENCES)], "en", ("en-us", "en-gb")[(k // 20) % 2]))
        pauses.append(round(float(rng.uniform(1.0, 3.0)), 2))
        est_s += 2.6 + pauses[-1]  # a sentence here lasts ~2.2-3.0 s at 140 wpm
    return SpeechSpec(f"long{minutes:g}min", tuple(utts), 1.0, tuple(pauses[:-1]), 1.0, "pink", -55.0, seed=42)


def lead_in_case(lead_in_s: float = 1.5) -> Case:
    """`lead_in_s` of digital silence, then one English sentence (en-us): the e2e lead-in test."""
    utt = Utterance(EN_SENTENCES[1], "en", "en-us")
    return build(SpeechSpec(f"leadin{lead_in_s:g}s", (utt,), lead_in_s, (), 0.5))
