"""Core of one `Lid/Detect` call (SPEC §4, STYLE §1): frames in, detection requests and one answer
out. Nothing here awaits or reads the clock; the speech probabilities come from an injected
`SpeechProbability` (a model call: the servicer runs `add_frame` in an executor).

LID listens to speech only: a `SpeechGate` keeps the flow's speech (plus short pads) and drops the
silence and noise around it; detections run on that speech audio. The early-answer policy: the first
detection runs once `min_s` of speech is in, the next ones each time `step_ms` more has arrived, never
two at once. A detection whose top probability reaches `confidence` answers at once. Otherwise the
call answers on the detection over the first `first_n_s` of speech, or over the speech there is when
`first_n_s` of audio have passed since the first speech (a pause) or the client ends the stream. An
answer below `min_score` is `und`; a flow without speech is `und` with score 0, without any detection.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.audio import NS_PER_SAMPLE
from services.lid.config import SAMPLE_RATE, LidConfig
from services.lid.speech import WINDOW_SAMPLES, SpeechGate, SpeechProbability

UNDETERMINED = "und"  # ISO 639-2 "undetermined": no speech, or no language above the floor


class InvalidFrame(ValueError):
    """A frame the service cannot use; the call ends with INVALID_ARGUMENT (SPEC §3)."""


@dataclass(frozen=True)
class Detection:
    """The engine's verdict on the first `samples` of the flow's speech."""

    lang: str
    score: float
    samples: int


@dataclass(frozen=True)
class RunDetection:
    """Ask the engine about `pcm` (PCM16 LE, the flow's first speech); report with `on_detection`."""

    pcm: bytes
    final: bool  # its result is the answer, whatever the score (below `min_score`: und)

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2


@dataclass(frozen=True)
class Answer:
    lang: str  # ISO 639-1; "und" below the floor or without speech; "" when the flow had no audio at all
    score: float
    audio_ms: int  # speech the answer is based on
    reason: str  # confident | first_n_seconds | end_of_stream | no_speech | no_audio


class EarlyAnswerPolicy:
    """Drive with `add_frame`/`end_of_stream`/`on_detection`; after each, `next_step()` says what to do:
    a `RunDetection` to start (at most one outstanding), the `Answer`, or None (wait for more input)."""

    def __init__(self, config: LidConfig, speech_probability: SpeechProbability) -> None:
        self._cfg = config
        self._vad = speech_probability
        self._gate = SpeechGate(config.vad_threshold, config.min_speech_windows, config.pad_windows, config.max_samples)
        self._unclassified = b""  # received audio short of a whole VAD window
        self._received = 0  # samples received
        self._flow_id: str | None = None
        self._ended = False
        self._in_flight: int | None = None  # samples of the outstanding detection
        self._last: Detection | None = None  # the latest detection
        self._answer: Answer | None = None

    @property
    def flow_id(self) -> str:
        return self._flow_id or ""

    @property
    def samples(self) -> int:
        """Speech samples kept (at most `first_n_s`)."""
        return self._gate.speech_samples

    @property
    def first_speech_sample(self) -> int | None:
        """Flow sample where speech began, None before any."""
        return self._gate.first_speech

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def answer(self) -> Answer | None:
        return self._answer

    def add_frame(self, flow_id: str, sr: int, channels: int, ns: int, pcm: bytes, last: bool) -> None:
        """Validate one `AudioFrame` and keep its speech; raises InvalidFrame. Blocks: runs the VAD."""
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
        self._received += len(pcm) // 2
        if self._answer is None and not self._enough_speech():
            audio = self._unclassified + pcm
            whole = len(audio) - len(audio) % (2 * WINDOW_SAMPLES)
            if whole:
                windows = [audio[i : i + 2 * WINDOW_SAMPLES] for i in range(0, whole, 2 * WINDOW_SAMPLES)]
                for window, prob in zip(windows, self._vad(audio[:whole]), strict=True):
                    self._gate.push(window, prob)
            self._unclassified = audio[whole:]
        if last:
            self._ended = True

    def end_of_stream(self) -> None:
        """The client half-closed, sent last=true, or went idle: answer on the audio at hand."""
        self._ended = True

    def _enough_speech(self) -> bool:
        """`first_n_s` of speech, or of audio since the first speech: time to answer."""
        limit = self._cfg.max_samples
        return self._gate.speech_samples >= limit or self._gate.since_first_speech >= limit

    def next_step(self) -> RunDetection | Answer | None:
        if self._answer is not None:
            return self._answer
        if self._in_flight is not None:
            return None
        have = self.samples
        reason = self._final_reason()
        if reason is not None:
            if have == 0:
                if self._received == 0:
                    self._answer = Answer("", 0.0, 0, "no_audio")
                else:
                    self._answer = Answer(UNDETERMINED, 0.0, 0, "no_speech")
                return self._answer
            if self._last is not None and self._last.samples == have:  # nothing new since: reuse it
                self._answer = self._floored(self._last, reason)
                return self._answer
            return self._request(have, final=True)
        last = self._last.samples if self._last is not None else 0
        due = last == 0 or have - last >= self._cfg.step_samples
        if have >= self._cfg.min_samples and due:
            return self._request(have, final=False)
        return None

    def on_detection(self, detection: Detection) -> None:
        """The engine's result for the outstanding `RunDetection`."""
        if self._in_flight is None or detection.samples != self._in_flight:
            raise RuntimeError("on_detection without a matching outstanding RunDetection")
        self._in_flight = None
        self._last = detection
        if detection.score >= self._cfg.confidence:
            self._answer = self._floored(detection, "confident")
            return
        reason = self._final_reason()
        if reason is not None and detection.samples == self.samples:
            self._answer = self._floored(detection, reason)

    def _final_reason(self) -> str | None:
        if self._enough_speech():
            return "first_n_seconds"
        return "end_of_stream" if self._ended else None

    def _floored(self, detection: Detection, reason: str) -> Answer:
        lang = detection.lang if detection.score >= self._cfg.min_score else UNDETERMINED
        return Answer(lang, detection.score, detection.samples * 1000 // SAMPLE_RATE, reason)

    def _request(self, samples: int, final: bool) -> RunDetection:
        # A detection over all the speech there is (ended, or at first_n_s) always yields the answer.
        self._in_flight = samples
        return RunDetection(bytes(self._gate.speech[: 2 * samples]), final)
