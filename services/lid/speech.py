"""Speech finding for LID (SPEC §4): LID listens to speech only, never to the silence or noise around it.

`SileroSpeech` is the Silero VAD that faster-whisper ships (`faster_whisper/assets/silero_vad_v6.onnx`,
loaded once per process by `faster_whisper.vad.get_vad_model`), run as a stream: the LSTM state and
the 64-sample context carry over from one call to the next, so probabilities do not depend on how the
audio was cut (the same numbers as faster-whisper's whole-clip `SileroVADModel.__call__`; tested).
`SpeechGate` is sans-I/O: per-window speech probabilities in, the flow's speech audio out.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import numpy as np

WINDOW_SAMPLES = 512  # Silero's window at 16 kHz (32 ms)
_CONTEXT_SAMPLES = 64  # samples of the previous window the model sees before each window


class SpeechProbability(Protocol):
    """Speech probability of each whole window of a flow's audio, fed in stream order (stateful)."""

    def __call__(self, pcm: bytes) -> list[float]:
        """`pcm`: PCM16 LE, a whole number of `WINDOW_SAMPLES` windows; one probability per window."""
        ...


class SileroSpeech:
    """One flow's Silero VAD stream on a shared onnxruntime session (`run` is thread-safe)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT_SAMPLES, dtype=np.float32)

    def __call__(self, pcm: bytes) -> list[float]:
        windows = (np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0).reshape(-1, WINDOW_SAMPLES)
        if not len(windows):
            return []
        before = np.concatenate((self._context[None], windows[:-1, -_CONTEXT_SAMPLES:]))
        self._context = windows[-1, -_CONTEXT_SAMPLES:].copy()
        feed = {"input": np.concatenate((before, windows), axis=1), "h": self._h, "c": self._c}
        probs, self._h, self._c = self._session.run(None, feed)
        return [float(p) for p in np.ravel(probs)]


def silero_session() -> Any:
    """faster-whisper's Silero VAD session (one per process, one intra-op thread)."""
    from faster_whisper.vad import get_vad_model  # heavy import, only where the model is used

    return get_vad_model().session


class SpeechGate:
    """Keeps the speech of a flow: windows with probability >= `threshold` (staying in speech down to
    `threshold - 0.15`, faster-whisper's `neg_threshold`), once a run of them lasts `min_speech_windows`,
    plus `pad_windows` of audio on each side. Shorter runs (clicks) and everything else are dropped.
    The kept audio is capped at `max_samples`."""

    def __init__(self, threshold: float, min_speech_windows: int, pad_windows: int, max_samples: int) -> None:
        self._on = threshold
        self._off = max(threshold - 0.15, 0.01)
        self._min_run = min_speech_windows
        self._pad = pad_windows
        self._max_bytes = 2 * max_samples
        self.speech = bytearray()  # the kept audio, pads included
        self.first_speech: int | None = None  # flow sample where the first accepted run began
        self.position = 0  # flow samples classified so far
        self._before: deque[bytes] = deque(maxlen=pad_windows)  # recent dropped windows (the lead pad)
        self._run: list[bytes] = []  # speech windows of a run not yet long enough
        self._in_speech = False  # hysteresis state
        self._active = False  # inside a kept segment or its trailing pad
        self._after = 0  # windows of trailing pad still to keep

    @property
    def speech_samples(self) -> int:
        return len(self.speech) // 2

    @property
    def since_first_speech(self) -> int:
        """Flow samples from the first speech to the end of what was classified (0 before it)."""
        return 0 if self.first_speech is None else self.position - self.first_speech

    def push(self, window: bytes, prob: float) -> None:
        """One window of `WINDOW_SAMPLES` and its speech probability, in stream order."""
        self._in_speech = prob >= self._on or (self._in_speech and prob >= self._off)
        if self._in_speech and self._active:  # speech goes on: keep it, the trailing pad restarts
            self._keep(window)
            self._after = self._pad
        elif self._in_speech:
            self._run.append(window)
            if len(self._run) >= self._min_run:
                if self.first_speech is None:
                    self.first_speech = self.position + WINDOW_SAMPLES * (1 - len(self._run))
                for w in (*self._before, *self._run):
                    self._keep(w)
                self._before.clear()
                self._run.clear()
                self._active, self._after = True, self._pad
        else:
            self._before.extend(self._run)  # a run too short to be speech is lead pad at most
            self._run.clear()
            if self._active and self._after > 0:
                self._keep(window)
                self._after -= 1
            else:
                self._active = False
                self._before.append(window)
        self.position += WINDOW_SAMPLES

    def _keep(self, window: bytes) -> None:
        room = self._max_bytes - len(self.speech)
        if room > 0:
            self.speech += window[:room]
