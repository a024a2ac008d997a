"""The sans-I/O core of Denoise/Stream (STYLE §1). `DenoiseStream` is one flow: it feeds the engine and
re-frames its output onto the input's session timeline (SPEC §3: `pts`/`seq`/`flow_id` of the audio
each output message covers). Output total length equals input total length.

Delay: an engine's output lags its input (its algorithmic delay); the core drops the engine's
`delay_samples` leading samples, emits whole output frames as soon as they exist, and at `finish()`
drains the engine, pads or trims to the input length and closes with an empty `last` frame.
`DenoiseSession` is one call: it routes frames to their flow (several flows may share a call, as on
the VAD link), starts a flow on its first frame and ends it on `last` or at the end of the call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common.audio import NS_PER_S
from services.denoise.engines import SAMPLE_RATE, Engine


class InvalidAudio(ValueError):
    """A frame the service cannot take (SPEC §3: PCM16 LE, 16 kHz, mono); ends the call."""


class TooManyFlows(RuntimeError):
    """A call opened more flows than `max_flows` at once; ends the call."""


@dataclass(frozen=True)
class FrameIn:
    """The fields of a common.v1.AudioFrame the core needs."""

    flow_id: str
    seq: int
    sr: int
    channels: int
    pts_ns: int
    pcm: bytes
    last: bool = False


@dataclass(frozen=True)
class FrameOut:
    flow_id: str
    seq: int
    pts_ns: int
    ns: int
    pcm: bytes
    last: bool = False


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    scaled = np.clip(np.rint(samples * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


class DenoiseStream:
    """One flow's denoise state. `push`/`finish` run the engine (blocking: call them from an
    executor, one at a time, in arrival order)."""

    def __init__(self, engine: Engine, frame_samples: int = 320, max_message_frames: int = 50) -> None:
        if frame_samples <= 0 or max_message_frames <= 0:
            raise ValueError("frame_samples and max_message_frames must be positive")
        self.engine = engine
        self.frame_samples = frame_samples
        # AudioFrame.ns is int32 nanoseconds (< 2.1 s): long outputs are split into several messages.
        self.max_message_samples = frame_samples * max_message_frames
        self.flow_id: str | None = None
        self._base_seq = 0
        self._base_pts_ns = 0
        self.samples_in = 0
        self.samples_out = 0
        self._to_drop = engine.delay_samples
        self._ready = np.zeros(0, dtype=np.float32)
        self.finished = False

    def push(self, frame: FrameIn) -> list[FrameOut]:
        """Denoise one frame (checked with `check_frame`); returns the whole output frames now ready.
        The flow's first frame fixes the timeline origin (`pts`, `seq`)."""
        if self.finished:
            raise InvalidAudio("frame after the end of the flow")
        if self.flow_id is None:
            self.flow_id = frame.flow_id
            self._base_seq = frame.seq
            self._base_pts_ns = frame.pts_ns
        samples = pcm16_to_float(frame.pcm)
        self.samples_in += samples.size
        self._take(self.engine.process(samples))
        return self._emit(final=False)

    def finish(self) -> list[FrameOut]:
        """Drain the engine, emit the rest (same total length as the input), then an empty `last`."""
        if self.finished:
            return []
        self.finished = True
        self._take(self.engine.flush())
        missing = self.samples_in - self.samples_out - self._ready.size
        if missing > 0:  # engines should not come up short; pad so the length contract holds
            self._ready = np.concatenate((self._ready, np.zeros(missing, dtype=np.float32)))
        out = self._emit(final=True)
        out.append(
            FrameOut(
                self.flow_id or "",
                self._seq_at(self.samples_out + self.frame_samples - 1),
                self._pts_at(self.samples_out),
                0,
                b"",
                last=True,
            )
        )
        return out

    def _take(self, out: np.ndarray) -> None:
        if self._to_drop:
            dropped = min(self._to_drop, out.size)
            out = out[dropped:]
            self._to_drop -= dropped
        if out.size:
            self._ready = np.concatenate((self._ready, out)) if self._ready.size else out

    def _emit(self, final: bool) -> list[FrameOut]:
        allowed = self.samples_in - self.samples_out  # never run ahead of the input timeline
        count = min(self._ready.size, allowed)
        if not final:
            count -= count % self.frame_samples
        if count <= 0:
            return []
        chunk, self._ready = self._ready[:count], self._ready[count:]
        out = []
        for offset in range(0, count, self.max_message_samples):
            part = chunk[offset : offset + self.max_message_samples]
            start = self.samples_out
            self.samples_out += part.size
            out.append(
                FrameOut(
                    self.flow_id or "",
                    self._seq_at(start),
                    self._pts_at(start),
                    part.size * NS_PER_S // SAMPLE_RATE,
                    float_to_pcm16(part),
                )
            )
        return out

    def _seq_at(self, sample: int) -> int:
        return self._base_seq + sample // self.frame_samples

    def _pts_at(self, sample: int) -> int:
        return self._base_pts_ns + sample * NS_PER_S // SAMPLE_RATE


def check_frame(frame: FrameIn) -> None:
    """Raise InvalidAudio unless the frame is PCM16 LE, 16 kHz, mono (SPEC §3). A frame without audio
    (e.g. a bare `last`) may leave sr/channels unset."""
    if len(frame.pcm) % 2:
        raise InvalidAudio(f"pcm has an odd byte count ({len(frame.pcm)}): not PCM16")
    if not frame.pcm and frame.sr == 0 and frame.channels == 0:
        return
    if frame.sr != SAMPLE_RATE:
        raise InvalidAudio(f"sr={frame.sr}: only {SAMPLE_RATE} Hz PCM16 is accepted")
    if frame.channels != 1:
        raise InvalidAudio(f"channels={frame.channels}: only mono is accepted")


class DenoiseSession:
    """The flows of one call. `check` is cheap (event loop); `process`/`finish_all` run engines
    (blocking: one at a time, in arrival order, from an executor). Engines come from `acquire` and go
    back through `release` once their flow ended cleanly (flushed, hence reset)."""

    def __init__(
        self,
        acquire: Callable[[], Engine],
        release: Callable[[Engine], None],
        frame_samples: int = 320,
        max_flows: int = 16,
    ) -> None:
        self._acquire = acquire
        self._release = release
        self.frame_samples = frame_samples
        self.max_flows = max_flows
        self.flows: dict[str, DenoiseStream] = {}
        self.samples_in = 0
        self.samples_out = 0

    def check(self, frame: FrameIn) -> None:
        check_frame(frame)
        if frame.flow_id not in self.flows and len(self.flows) >= self.max_flows:
            raise TooManyFlows(f"more than {self.max_flows} flows open on one call")

    def process(self, frame: FrameIn) -> list[FrameOut]:
        """Denoise a checked frame; on `last` also end its flow (rest of the audio, then `last`)."""
        flow = self.flows.get(frame.flow_id)
        if flow is None:
            flow = self.flows[frame.flow_id] = DenoiseStream(self._acquire(), self.frame_samples)
        self.samples_in += len(frame.pcm) // 2
        out = flow.push(frame)
        if frame.last:
            out += self._end(frame.flow_id)
        return self._count(out)

    def finish_all(self) -> list[FrameOut]:
        """The call was half-closed: end every open flow as if it had sent `last` (SPEC §1 flush)."""
        out: list[FrameOut] = []
        for flow_id in list(self.flows):
            out += self._end(flow_id)
        return self._count(out)

    def _end(self, flow_id: str) -> list[FrameOut]:
        flow = self.flows.pop(flow_id)
        out = flow.finish()
        self._release(flow.engine)
        return out

    def _count(self, out: list[FrameOut]) -> list[FrameOut]:
        self.samples_out += sum(len(o.pcm) for o in out) // 2
        return out
