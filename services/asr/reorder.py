"""Packet reorder window with loss concealment, sans-I/O (SPEC §4: "decodes Opus packet by packet").

Packets are put back in `seq` order inside a window of a few packets. A missing packet is given up
once `window_packets` later packets have arrived (or at flush) and is handed out as a gap to conceal,
so one loss never stalls the stream. Duplicates and packets older than the release point are dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


class GapTooLarge(ValueError):
    """A packet's `seq` jumps further ahead than the stream may conceal."""


@dataclass(frozen=True)
class Slot:
    """One frame of the timeline, in order. `data` is None for a lost packet; `next_data` is the
    packet after it when already here (its Opus in-band FEC may carry the lost frame). `pcm` marks a
    PCM16 packet inside an Opus stream (the sender's encoder failed, SPEC §4)."""

    seq: int
    data: bytes | None
    next_data: bytes | None = None
    pcm: bool = False

    @property
    def lost(self) -> bool:
        return self.data is None


@dataclass
class ReorderStats:
    released: int = 0
    concealed: int = 0
    late: int = 0
    duplicate: int = 0


@dataclass
class PacketReorderBuffer:
    """Feed `push(seq, data)`, get the slots now ready, in order; `flush()` at end of stream."""

    window_packets: int = 3
    max_gap_packets: int = 250
    stats: ReorderStats = field(default_factory=ReorderStats)
    _next_seq: int | None = None
    _pending: dict[int, tuple[bytes, bool]] = field(default_factory=dict)  # seq -> (data, pcm)
    _recent: deque[int] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def next_seq(self) -> int | None:
        """The seq of the next slot to be released (None before the first packet)."""
        return self._next_seq

    def push(self, seq: int, data: bytes, pcm: bool = False) -> list[Slot]:
        if self._next_seq is None:
            self._next_seq = seq  # the first packet fixes the start of the stream
        if seq < self._next_seq:
            if seq in self._recent:
                self.stats.duplicate += 1
            else:
                self.stats.late += 1
            return []
        if seq in self._pending:
            self.stats.duplicate += 1
            return []
        if seq - self._next_seq > self.max_gap_packets:
            raise GapTooLarge(
                f"seq {seq} is {seq - self._next_seq} packets ahead of {self._next_seq} (limit {self.max_gap_packets})"
            )
        self._pending[seq] = (data, pcm)
        return self._drain(force=False)

    def flush(self) -> list[Slot]:
        """Release everything held, concealing the holes between held packets."""
        return self._drain(force=True)

    def _drain(self, force: bool) -> list[Slot]:
        out: list[Slot] = []
        assert self._next_seq is not None or not self._pending
        while self._pending:
            seq = self._next_seq
            assert seq is not None
            held = self._pending.pop(seq, None)
            if held is not None:
                out.append(Slot(seq, held[0], pcm=held[1]))
                self._recent.append(seq)
            elif force or max(self._pending) - seq >= self.window_packets:
                after = self._pending.get(seq + 1)
                out.append(Slot(seq, None, after[0] if after and not after[1] else None))
                self.stats.concealed += 1
            else:
                break
            self._next_seq = seq + 1
            self.stats.released += 1
        return out
