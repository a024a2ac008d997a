"""PCM -> Opus for the orchestrator->ASR link, the only Opus link of the system (SPEC §1, §4).

`OpusLink` turns the session's audio into `OpusPacket`s of ASR_LINK_FRAME_MS each. Packet `seq` n
covers [n * frame_ms, (n + 1) * frame_ms) of the session timeline (SPEC §3), whatever the size of
the blocks it is given: it numbers from the first block's pts (silence-padded back to a frame
boundary) and carries a part frame over to the next call. If the encoder fails, the session falls
back to PCM passthrough for the rest of the stream (`pcm_to_opus_fail_total`), and the packets say
so (`OpusPacket.pcm`), so the ASR side decodes each packet by what it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import opuslib

from common.audio import BYTES_PER_SAMPLE, SAMPLE_RATE
from proto import asr_pb2

log = logging.getLogger(__name__)


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
        self._next_seq: int | None = None
        self._carry = b""  # the start of a frame whose end has not come yet
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

    def encode(self, pcm: bytes, pts_ns: int) -> tuple[list[asr_pb2.OpusPacket], bool]:
        """The whole frames of the audio so far -> packets, and whether the encoder failed during
        this call. `pts_ns` places the first block on the timeline; later blocks follow it."""
        if self._next_seq is None:
            # The first packet starts on a frame boundary: silence fills the audio before `pts_ns`.
            frame_ns = self.config.frame_ms * 1_000_000
            self._next_seq, lead_ns = divmod(pts_ns, frame_ns)
            self._carry = bytes(lead_ns * SAMPLE_RATE // 1_000_000_000 * BYTES_PER_SAMPLE)
        data = self._carry + pcm
        whole = len(data) - len(data) % self.frame_bytes
        self._carry = data[whole:]
        return self._encode_frames(data[:whole])

    def flush(self) -> tuple[list[asr_pb2.OpusPacket], bool]:
        """End of audio: the part frame left, zero-padded."""
        if not self._carry:
            return [], False
        data, self._carry = self._carry + bytes(self.frame_bytes - len(self._carry)), b""
        return self._encode_frames(data)

    def _encode_frames(self, pcm: bytes) -> tuple[list[asr_pb2.OpusPacket], bool]:
        packets = []
        failed_now = False
        for off in range(0, len(pcm), self.frame_bytes):
            frame = pcm[off : off + self.frame_bytes]
            assert self._next_seq is not None
            seq, self._next_seq = self._next_seq, self._next_seq + 1
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
