"""Language identification engines (SPEC §4, §9). Calls block: run them in an executor (STYLE §7).

`WhisperLid` is faster-whisper's `WhisperModel.detect_language` on the multilingual Whisper base
(CTranslate2, int8), with one knob more: the encoder input is zero-padded to `window_s` instead of
Whisper's fixed 30 s. At `window_s=30` it computes exactly what `detect_language` does; at 10 s the
encoder sees a third of the frames, several times faster, for the same accuracy on the first 3 s
of the test clips (figures in docs/services/lid.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from services.lid.policy import Detection, RunDetection

LangProbs = list[tuple[str, float]]  # (ISO 639-1 code, probability), most probable first


class LidEngine(Protocol):
    """Spoken-language probabilities of a PCM16 LE / 16 kHz / mono clip."""

    name: str

    def probabilities(self, pcm: bytes) -> LangProbs: ...


def restrict(probs: LangProbs, langs: Sequence[str]) -> LangProbs:
    """Keep only `langs` (all when empty) and renormalise so that they sum to 1."""
    if not langs:
        return sorted(probs, key=lambda p: -p[1])
    wanted = set(langs)
    kept = [(lang, p) for lang, p in probs if lang in wanted]
    total = sum(p for _, p in kept)
    if total <= 0.0:
        return [(lang, 1.0 / len(kept)) for lang, _ in kept]
    return sorted(((lang, p / total) for lang, p in kept), key=lambda p: -p[1])


class LanguageDetector:
    """An engine plus the candidate languages: turns a `RunDetection` into a `Detection`."""

    def __init__(self, engine: LidEngine, langs: Sequence[str] = ()) -> None:
        self.engine = engine
        self.langs = tuple(langs)

    def detect(self, request: RunDetection) -> Detection:
        probs = restrict(self.engine.probabilities(request.pcm), self.langs)
        if not probs:
            raise RuntimeError(f"engine {self.engine.name} knows none of the languages {self.langs}")
        lang, score = probs[0]
        return Detection(lang, float(score), request.samples)

    def check_langs(self) -> None:
        """Run the engine once on a second of noise and fail if it cannot name a configured language."""
        known = {lang for lang, _ in self.engine.probabilities(warmup_pcm())}
        missing = sorted(set(self.langs) - known)
        if missing:
            raise ValueError(f"model {self.engine.name} does not know LID_LANGS {','.join(missing)}")


def warmup_pcm(seconds: float = 1.0) -> bytes:
    """Deterministic low-level noise: exercises feature extraction, encoder and language head."""
    rng = np.random.default_rng(0)
    return (rng.normal(0.0, 1000.0, int(16000 * seconds))).astype("<i2").tobytes()


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


class WhisperLid:
    """faster-whisper's language detection on a CTranslate2 Whisper model."""

    def __init__(
        self,
        model_dir: Path,
        cpu_threads: int = 1,
        workers: int = 1,
        window_s: float = 10.0,
        compute_type: str = "int8",
    ) -> None:
        from faster_whisper import WhisperModel  # heavy import, only where the model is used

        if not (model_dir / "model.bin").is_file():  # a bare name would make faster-whisper download
            raise ValueError(f"{model_dir} is not a CTranslate2 model directory (no model.bin)")
        self.name = f"whisper:{model_dir.name}"
        self._model = WhisperModel(
            str(model_dir),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=workers,
            local_files_only=True,
        )
        if not self._model.model.is_multilingual:
            raise ValueError(f"{model_dir} is an English-only Whisper model; LID needs a multilingual one")
        # 100 mel frames per second (hop 160 at 16 kHz); Whisper's 30 s context is 3000 frames.
        self._frames = min(round(window_s * 100), self._model.feature_extractor.nb_max_frames)

    def probabilities(self, pcm: bytes) -> LangProbs:
        audio = pcm16_to_float(pcm)[: self._frames * 160]
        features = self._model.feature_extractor(audio)[:, : self._frames]
        if features.shape[-1] < self._frames:  # zero padding, as faster_whisper.audio.pad_or_trim
            features = np.pad(features, ((0, 0), (0, self._frames - features.shape[-1])))
        encoded = self._model.encode(features)
        results = self._model.model.detect_language(encoded)[0]
        return [(token[2:-2], float(p)) for token, p in results]  # "<|zh|>" -> "zh"
