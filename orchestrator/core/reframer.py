"""Re-framing of client audio into whole PCM16 frames (SPEC §2: any chunk length is accepted)."""

from __future__ import annotations

from dataclasses import dataclass

from common.audio import BYTES_PER_SAMPLE


@dataclass(frozen=True, slots=True)
class AudioBlock:
    """Whole frames of PCM16 LE cut from the client's stream.

    `seq` is the index of the first frame, `pts_ns` its start on the session timeline. `pcm` is a
    multiple of the frame size, except for the very last block of a session, which may be shorter.
    """

    seq: int
    pts_ns: int
    pcm: bytes

    @property
    def samples(self) -> int:
        return len(self.pcm) // BYTES_PER_SAMPLE


class Reframer:
    """Cuts an arbitrary byte stream into whole frames of `frame_bytes`.

    An odd trailing byte, or a partial frame, waits for the rest of its bytes in the next chunk.
    """

    def __init__(self, frame_ms: int = 20, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self.frame_bytes = self.frame_samples * BYTES_PER_SAMPLE
        self._pending = bytearray()
        self._next_seq = 0
        self._samples_out = 0

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    @property
    def samples_out(self) -> int:
        return self._samples_out

    def feed(self, data: bytes) -> AudioBlock | None:
        """Add client bytes; return the whole frames now complete, if any."""
        if not self._pending and len(data) % self.frame_bytes == 0:
            whole = bytes(data)  # fast path: the client already sends whole frames
        else:
            self._pending += data
            cut = len(self._pending) - len(self._pending) % self.frame_bytes
            if cut == 0:
                return None
            whole = bytes(self._pending[:cut])
            del self._pending[:cut]
        if not whole:
            return None
        return self._emit(whole)

    def flush(self) -> tuple[AudioBlock | None, int]:
        """End of stream: the remaining whole samples as a short block, and how many odd bytes were
        dropped (0 or 1)."""
        odd = len(self._pending) % BYTES_PER_SAMPLE
        rest = bytes(self._pending[: len(self._pending) - odd])
        self._pending.clear()
        return (self._emit(rest) if rest else None), odd

    def _emit(self, pcm: bytes) -> AudioBlock:
        block = AudioBlock(self._next_seq, self._samples_out * 1_000_000_000 // self.sample_rate, pcm)
        self._next_seq += -(-len(pcm) // self.frame_bytes)
        self._samples_out += len(pcm) // BYTES_PER_SAMPLE
        return block
