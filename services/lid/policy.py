"""Sans-I/O core of one `Lid/Detect` call (SPEC §4, STYLE §1): frames in, detection requests and
one answer out. Nothing here awaits, reads the clock or touches the model.

The early-answer policy: the first detection runs once `min_s` of audio is in, the next ones each
time `step_ms` more has arrived, never two at once. A detection whose top probability reaches
`confidence` answers at once; otherwise the call answers on the detection over the first
`first_n_s` of audio, or over all the audio there is when the client ends the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.audio import NS_PER_SAMPLE
from services.lid.config import SAMPLE_RATE, LidConfig


class InvalidFrame(ValueError):
    """A frame the service cannot use; the call ends with INVALID_ARGUMENT (SPEC §3)."""


@dataclass(frozen=True)
class Detection:
    """The engine's verdict on the first `samples` of the flow."""

    lang: str
    score: float
    samples: int


@dataclass(frozen=True)
class RunDetection:
    """Ask the engine about `pcm` (PCM16 LE, the flow's first samples); report with `on_detection`."""

    pcm: bytes
    final: bool  # its result is the answer, whatever the score

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2


@dataclass(frozen=True)
class Answer:
    lang: str  # ISO 639-1; "" when the flow had no audio at all
    score: float
    audio_ms: int
    reason: str  # confident | first_n_seconds | end_of_stream | no_audio


class EarlyAnswerPolicy:
    """Drive with `add_frame`/`end_of_stream`/`on_detection`; after each, `next_step()` says what to do:
    a `RunDetection` to start (at most one outstanding), the `Answer`, or None (wait for more input)."""

    def __init__(self, config: LidConfig) -> None:
        self._cfg = config
        self._pcm = bytearray()
        self._flow_id: str | None = None
        self._ended = False
        self._in_flight: int | None = None  # samples of the outstanding detection
        self._last_detected = 0  # samples the latest requested detection covered
        self._answer: Answer | None = None

    @property
    def flow_id(self) -> str:
        return self._flow_id or ""

    @property
    def samples(self) -> int:
        return len(self._pcm) // 2

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def answer(self) -> Answer | None:
        return self._answer

    def add_frame(self, flow_id: str, sr: int, channels: int, ns: int, pcm: bytes, last: bool) -> None:
        """Validate one `AudioFrame` and keep its audio up to `first_n_s`; raises InvalidFrame."""
        if self._ended:
            raise InvalidFrame("frame after the end of the stream (last=true was already sent)")
        if sr != SAMPLE_RATE:
            raise InvalidFrame(f"sr={sr}: only {SAMPLE_RATE} Hz PCM16 is accepted")
        if channels != 1:
            raise InvalidFrame(f"channels={channels}: only mono is accepted")
        if len(pcm) % 2:
            raise InvalidFrame(f"pcm has {len(pcm)} bytes, not a whole number of 16-bit samples")
        if ns and ns != len(pcm) // 2 * NS_PER_SAMPLE:
            raise InvalidFrame(f"ns={ns} does not match {len(pcm) // 2} samples at {SAMPLE_RATE} Hz")
        if self._flow_id is None:
            self._flow_id = flow_id
        elif flow_id != self._flow_id:
            raise InvalidFrame(f"flow_id changed from {self._flow_id!r} to {flow_id!r} within one call")
        room = 2 * self._cfg.max_samples - len(self._pcm)
        if room > 0:
            self._pcm += pcm[:room]
        if last:
            self._ended = True

    def end_of_stream(self) -> None:
        """The client half-closed, sent last=true, or went idle: answer on the audio at hand."""
        self._ended = True

    def next_step(self) -> RunDetection | Answer | None:
        if self._answer is not None:
            return self._answer
        if self._in_flight is not None:
            return None
        have = self.samples
        if self._ended or have >= self._cfg.max_samples:
            if have == 0:
                self._answer = Answer("", 0.0, 0, "no_audio")
                return self._answer
            return self._request(have, final=True)
        due = self._last_detected == 0 or have - self._last_detected >= self._cfg.step_samples
        if have >= self._cfg.min_samples and due:
            return self._request(have, final=False)
        return None

    def on_detection(self, detection: Detection) -> None:
        """The engine's result for the outstanding `RunDetection`."""
        if self._in_flight is None or detection.samples != self._in_flight:
            raise RuntimeError("on_detection without a matching outstanding RunDetection")
        self._in_flight = None
        audio_ms = detection.samples * 1000 // SAMPLE_RATE
        if detection.score >= self._cfg.confidence:
            self._answer = Answer(detection.lang, detection.score, audio_ms, "confident")
        elif detection.samples >= self._cfg.max_samples:
            self._answer = Answer(detection.lang, detection.score, audio_ms, "first_n_seconds")
        elif self._ended and detection.samples == self.samples:
            self._answer = Answer(detection.lang, detection.score, audio_ms, "end_of_stream")

    def _request(self, samples: int, final: bool) -> RunDetection:
        # A detection over everything there is (ended, or at first_n_s) always yields the answer.
        self._in_flight = samples
        self._last_detected = samples
        return RunDetection(bytes(self._pcm[: 2 * samples]), final)
