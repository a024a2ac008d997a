"""Turns released slots back into PCM frames: Opus with libopus PLC/FEC for lost packets, or PCM16
passthrough (the fallback link, SPEC §4) with silence for lost packets. An Opus stream may switch to
PCM packets (`OpusPacket.pcm`) when the sender's encoder fails; a loss after that is silence too."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import opuslib

from services.asr.reorder import Slot

MAX_OPUS_PACKET_BYTES = 1500
OPUS_FRAME_MS = (10, 20, 40, 60)


class BadPacket(ValueError):
    """A packet that cannot be a frame of this stream (wrong size or duration)."""


@dataclass
class FrameDecoder:
    """Decodes one stream's slots into int16 frames of exactly `frame_ms`."""

    codec: str
    sample_rate: int = 16_000
    frame_ms: int = 20
    corrupt: int = 0

    def __post_init__(self) -> None:
        self.frame_samples = self.sample_rate * self.frame_ms // 1000
        self._opus: opuslib.Decoder | None = None
        self._pcm_mode = False  # the last packet of an Opus stream was PCM (sender fell back)
        if self.codec == "opus":
            if self.frame_ms not in OPUS_FRAME_MS:
                raise BadPacket(f"frame_ms {self.frame_ms} is not an Opus frame size {OPUS_FRAME_MS}")
            self._opus = opuslib.Decoder(self.sample_rate, 1)
        elif self.codec != "pcm":
            raise BadPacket(f"codec {self.codec!r} is not 'opus' or 'pcm'")

    def check(self, data: bytes, pcm: bool = False) -> None:
        """Reject a packet on arrival, before it enters the reorder window."""
        if self.codec == "pcm" or pcm:
            if len(data) % 2 or len(data) > 2 * self.frame_samples:
                raise BadPacket(
                    f"PCM packet of {len(data)} bytes: expected an even count "
                    f"<= {2 * self.frame_samples} ({self.frame_ms} ms PCM16)"
                )
        elif not data or len(data) > MAX_OPUS_PACKET_BYTES:
            raise BadPacket(f"Opus packet of {len(data)} bytes (expected 1..{MAX_OPUS_PACKET_BYTES})")

    def decode(self, slot: Slot) -> np.ndarray:
        if slot.data is not None:
            self._pcm_mode = slot.pcm
        if self._opus is None or self._pcm_mode:
            return self._pcm(slot)
        return self._opus_decode(self._opus, slot)

    def _pcm(self, slot: Slot) -> np.ndarray:
        frame = np.zeros(self.frame_samples, dtype=np.int16)  # silence conceals a lost PCM packet
        if slot.data is not None:
            samples = np.frombuffer(slot.data, dtype="<i2")
            frame[: samples.size] = samples  # a short last frame is padded to keep the timeline
        return frame

    def _opus_decode(self, dec: opuslib.Decoder, slot: Slot) -> np.ndarray:
        n = self.frame_samples
        if slot.data is None:
            # In-band FEC of the next packet when it is here, else packet loss concealment.
            pcm = dec.decode(slot.next_data, n, decode_fec=True) if slot.next_data else dec.decode(b"", n)
        else:
            try:
                pcm = dec.decode(slot.data, 6 * n)
            except opuslib.OpusError:
                self.corrupt += 1
                pcm = dec.decode(b"", n)
        frame = np.frombuffer(pcm, dtype="<i2")
        if frame.size != n:
            raise BadPacket(f"Opus packet seq {slot.seq} holds {frame.size} samples, expected {n}")
        return frame
