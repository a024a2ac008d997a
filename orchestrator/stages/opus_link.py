"""PCM -> Opus for the orchestrator->ASR link, the only Opus link of the system (SPEC §1, §4).

`OpusLink` turns whole 20 ms PCM frames into `OpusPacket`s. If the encoder fails, the session
falls back to PCM passthrough for the rest of the stream (`pcm_to_opus_fail_total`), and the
packets say so (`OpusPacket.pcm`), so the ASR side decodes each packet by what it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import opuslib

from orchestrator.core.reframer import BYTES_PER_SAMPLE
from proto import asr_pb2

log = logging.getLogger(__name__)
from common.audio import SAMPLE_RATE  # noqa: E402


@dataclass(frozen=True)
class OpusLinkConfig:
    """ASR_LINK_* keys of SPEC §5."""

    codec: str = "opus"  # "opus" | "pcm"
    bitrate: int = 20000
    frame_ms: int = 20
    vbr: bool = True
    complexity: int = 5
    # Fault injection for chaos tests: the encoder raises from this frame on (0 = never).
    fault_after_frames: int = 0

    def __post_init__(self) -> None:
        if self.codec not in ("opus", "pcm"):
            raise ValueError("ASR_LINK_CODEC must be 'opus' or 'pcm'")
        if not 6000 <= self.bitrate <= 510000:
            raise ValueError("ASR_LINK_BITRATE must be within 6000..510000")
        if self.frame_ms not in (10, 20, 40, 60):
            raise ValueError("ASR_LINK_FRAME_MS must be 10, 20, 40 or 60")
        if not 0 <= self.complexity <= 10:
            raise ValueError("ASR_LINK_COMPLEXITY must be within 0..10")


class OpusLink:
    """Per-session encoder state; `encode` is blocking and meant for an executor."""

    def __init__(self, config: OpusLinkConfig) -> None:
        self.config = config
        self.frame_bytes = SAMPLE_RATE * config.frame_ms // 1000 * BYTES_PER_SAMPLE
        self.codec = config.codec
        self.failed_reason: str | None = None
        self._frames = 0
        self._encoder: opuslib.Encoder | None = None
        if config.codec == "opus":
            try:
                self._encoder = self._new_encoder()
            except Exception as exc:  # libopus missing or refusing the settings
                self._fall_back(exc)

    def _new_encoder(self) -> opuslib.Encoder:
        enc = opuslib.Encoder(SAMPLE_RATE, 1, opuslib.APPLICATION_VOIP)
        enc.bitrate = self.config.bitrate
        enc.vbr = 1 if self.config.vbr else 0
        enc.complexity = self.config.complexity
        return enc

    @property
    def start_codec(self) -> str:
        """What the Start message announces: the codec chosen when the stream opened."""
        return self.config.codec

    def encode(self, pcm: bytes, first_seq: int) -> tuple[list[asr_pb2.OpusPacket], bool]:
        """Whole frames of `pcm` (the last may be short: it is zero-padded) -> packets, and
        whether the encoder failed during this call."""
        packets = []
        failed_now = False
        for i, off in enumerate(range(0, len(pcm), self.frame_bytes)):
            frame = pcm[off : off + self.frame_bytes]
            if len(frame) < self.frame_bytes:
                frame = frame + bytes(self.frame_bytes - len(frame))
            seq = first_seq + i
            if self._encoder is not None:
                try:
                    self._frames += 1
                    if self.config.fault_after_frames and self._frames > self.config.fault_after_frames:
                        raise opuslib.OpusError(-3)  # OPUS_INTERNAL_ERROR, injected
                    packets.append(asr_pb2.OpusPacket(data=self._encoder.encode(frame, len(frame) // 2), seq=seq))
                    continue
                except Exception as exc:
                    self._fall_back(exc)
                    failed_now = True
            packets.append(asr_pb2.OpusPacket(data=frame, seq=seq, pcm=self.start_codec == "opus"))
        return packets, failed_now

    def _fall_back(self, exc: BaseException) -> None:
        self._encoder = None
        self.codec = "pcm"
        self.failed_reason = f"{type(exc).__name__}: {exc}"
