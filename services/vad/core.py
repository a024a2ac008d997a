"""Sans-I/O VAD core (SPEC §3, STYLE §1): AudioFrames in, speech-boundary AudioFrames out.

`VadSession` serves one gRPC call and keys a `FlowTracker` by flow_id. Each tracker re-frames the
PCM into fixed model windows, so boundaries depend on the audio only, never on how it was chunked.
Times are sample positions turned into session-timeline ns: `pts = first_pts + sample * 62_500`.
Nothing here awaits or touches sockets; the servicer runs `process` in an executor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np

from common.audio import NS_PER_SAMPLE
from proto import common_pb2
from services.vad.config import SAMPLE_RATE, VadConfig
from services.vad.detector import SpeechDetector

SPEECH_START = common_pb2.SPEECH_START
SPEECH_END = common_pb2.SPEECH_END
# Call metadata (proto/vad.proto): the silence that ends a segment for this call's flows, in ms.
MIN_SILENCE_KEY = "vad-min-silence-ms"
MAX_MIN_SILENCE_MS = 10_000


class InvalidFrame(ValueError):
    """The input frame breaks the AudioFrame contract (maps to INVALID_ARGUMENT)."""


class TooManyFlows(RuntimeError):
    """A call carries more live flows than `max_flows_per_stream` (maps to RESOURCE_EXHAUSTED)."""


def validate(frame: common_pb2.AudioFrame) -> None:
    """PCM16 LE, 16 kHz, mono (SPEC §3). A frame without audio may leave sr/channels unset (0)."""
    if not frame.pcm and frame.sr == 0 and frame.channels == 0:
        return
    if frame.sr != SAMPLE_RATE:
        raise InvalidFrame(f"flow {frame.flow_id!r} seq {frame.seq}: sr={frame.sr}, expected {SAMPLE_RATE}")
    if frame.channels != 1:
        raise InvalidFrame(f"flow {frame.flow_id!r} seq {frame.seq}: channels={frame.channels}, expected 1")
    if len(frame.pcm) % 2:
        raise InvalidFrame(f"flow {frame.flow_id!r} seq {frame.seq}: odd PCM16 byte count {len(frame.pcm)}")


def call_config(config: VadConfig, metadata: Iterable[tuple[str, str | bytes]]) -> VadConfig:
    """The config of one call: the service's, with the call's own `vad-min-silence-ms` if it sent one
    (a session's `endpointing`)."""
    for key, value in metadata:
        if key != MIN_SILENCE_KEY:
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= MAX_MIN_SILENCE_MS:
            raise InvalidFrame(f"{MIN_SILENCE_KEY}={text[:16]!r}: expected 0..{MAX_MIN_SILENCE_MS} ms")
        return replace(config, min_silence_ms=int(text))
    return config


class FlowTracker:
    """Speech boundaries of one flow, from one sherpa-onnx detector fed whole model windows."""

    def __init__(self, flow_id: str, first_pts: int, config: VadConfig, detector: SpeechDetector) -> None:
        self.flow_id = flow_id
        self.first_pts = first_pts
        self.detector = detector
        self._det = detector
        self._window = config.window_samples
        self._pad_start = config.pad_start_ms * SAMPLE_RATE // 1000
        self._pad_end = config.pad_end_ms * SAMPLE_RATE // 1000
        self._silence_windows = (config.min_silence_ms + 500) // config.chunk_ms + 1
        self._max_speech = int(config.max_speech_s * SAMPLE_RATE)
        self._offset = 0  # flow sample of the detector's sample 0 (moves when a long segment is cut)
        self._seg_start = 0  # flow sample where the open segment started
        self._pending = np.zeros(0, dtype=np.float32)  # received, not yet a whole window
        self.fed = 0  # samples given to the detector
        self.received = 0  # samples received
        self.in_speech = False
        self._last_end = 0  # sample of the last SPEECH_END, so padded segments never overlap
        self.last_seq = 0

    def feed(self, pcm: bytes, seq: int) -> list[common_pb2.AudioFrame]:
        """Add PCM16 LE audio; return the boundaries it completes."""
        self.last_seq = seq
        if not pcm:
            return []
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        self.received += samples.size
        buf = np.concatenate((self._pending, samples)) if self._pending.size else samples
        out: list[common_pb2.AudioFrame] = []
        w = self._window
        whole = buf.size - buf.size % w
        for i in range(0, whole, w):
            self._det.accept_waveform(buf[i : i + w])
            self.fed += w
            self._collect(seq, out)
        self._pending = buf[whole:].copy()
        return out

    def finish(self, seq: int | None = None) -> list[common_pb2.AudioFrame]:
        """End of the flow: close an open segment at the end of its audio, then the `last` frame."""
        seq = self.last_seq if seq is None else seq
        out: list[common_pb2.AudioFrame] = []
        if self.in_speech:
            end = self._close_with_silence()
            out.append(self._boundary(SPEECH_END, min(end + self._pad_end, self.received), seq))
            self.in_speech = False
        done = self._frame(seq, self.first_pts + self.received * NS_PER_SAMPLE)
        done.last = True
        out.append(done)
        return out

    def _close_with_silence(self) -> int:
        """Let the detector see digital silence after the audio so it places the end of the open
        segment itself (the speech may have stopped just before the flush); at most
        min_silence + 0.5 s of it. Falls back to the end of the audio."""
        w = self._window
        silence = np.zeros(w, dtype=np.float32)
        first = np.concatenate((self._pending, silence[: w - self._pending.size]))
        self._pending = np.zeros(0, dtype=np.float32)
        for i in range(self._silence_windows):
            self._det.accept_waveform(first if i == 0 else silence)
            if not self._det.empty():
                seg = self._det.front
                end = self._offset + int(seg.start) + len(seg.samples)
                self._det.pop()
                return end
        self._det.flush()
        while not self._det.empty():
            self._det.pop()
        return self.received

    def _collect(self, seq: int, out: list[common_pb2.AudioFrame]) -> None:
        # Finished segments first: a window ends at most one segment.
        while not self._det.empty():
            seg = self._det.front
            start = self._offset + int(seg.start)
            end = start + len(seg.samples)
            self._det.pop()
            if not self.in_speech:
                out.append(self._start(start, seq))
            out.append(self._boundary(SPEECH_END, min(end + self._pad_end, self.fed), seq))
            self.in_speech = False
        # SPEECH_START as soon as the detector commits to speech, not when the segment ends.
        if not self.in_speech and self._det.is_speech_detected():
            out.append(self._start(self._offset + int(self._det.current_segment.start), seq))
        elif self.in_speech and self.fed - self._seg_start >= self._max_speech:
            # Cut a segment at max_speech_s (sherpa-onnx only raises its threshold) and restart the
            # detector, which also bounds the samples it keeps; speech that goes on starts anew.
            out.append(self._boundary(SPEECH_END, self._seg_start + self._max_speech, seq))
            self.in_speech = False
            self._det.reset()
            self._offset = self.fed

    def _start(self, start: int, seq: int) -> common_pb2.AudioFrame:
        self.in_speech = True
        self._seg_start = start
        return self._boundary(SPEECH_START, max(start - self._pad_start, self._last_end, 0), seq)

    def _boundary(self, activity: int, sample: int, seq: int) -> common_pb2.AudioFrame:
        frame = self._frame(seq, self.first_pts + sample * NS_PER_SAMPLE)
        frame.activity = activity  # type: ignore[assignment]
        if activity == SPEECH_END:
            self._last_end = sample
        return frame

    def _frame(self, seq: int, pts: int) -> common_pb2.AudioFrame:
        return common_pb2.AudioFrame(flow_id=self.flow_id, seq=seq, sr=SAMPLE_RATE, channels=1, pts=pts)


class VadSession:
    """All flows of one Stream call. Feed frames in order; read the boundary frames to send."""

    def __init__(
        self,
        config: VadConfig,
        make_detector: Callable[[], SpeechDetector],
        release: Callable[[SpeechDetector], None] | None = None,
    ) -> None:
        self._config = config
        self._make_detector = make_detector
        self._release = release  # called with a finished flow's detector (DetectorPool.give)
        self.flows: dict[str, FlowTracker] = {}

    def process(self, frame: common_pb2.AudioFrame) -> list[common_pb2.AudioFrame]:
        """One input message -> the boundaries it completes (+ the `last` frame if it is the last)."""
        validate(frame)
        tracker = self.flows.get(frame.flow_id)
        if tracker is None:
            if len(self.flows) >= self._config.max_flows_per_stream:
                raise TooManyFlows(f"more than {self._config.max_flows_per_stream} live flows on one stream")
            tracker = FlowTracker(frame.flow_id, frame.pts, self._config, self._make_detector())
            self.flows[frame.flow_id] = tracker
        out = tracker.feed(frame.pcm, frame.seq)
        if frame.last:
            out.extend(tracker.finish(frame.seq))
            del self.flows[frame.flow_id]
            self._give_back(tracker)
        return out

    def finish_all(self) -> list[common_pb2.AudioFrame]:
        """The client half-closed: flush every open flow as if it had sent `last`."""
        out: list[common_pb2.AudioFrame] = []
        for tracker in self.flows.values():
            out.extend(tracker.finish())
            self._give_back(tracker)
        self.flows.clear()
        return out

    def _give_back(self, tracker: FlowTracker) -> None:
        if self._release is not None:
            self._release(tracker.detector)
