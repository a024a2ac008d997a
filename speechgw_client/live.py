"""A live source (a microphone: PCM blocks as they are recorded, open-ended) over one or more
connections of one session (docs/protocol.md#resume).

`AudioBacklog` is the audio kept for a resume, without I/O: the blocks go in as the source delivers
them, each connection reads on from where the gateway asks, and what no resume can ask for again is
dropped. `LiveFeed` drives it: one task reads the source for the whole stream, whether or not a
connection is up (blocks recorded during an outage wait in the backlog), and each connection sends
from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Protocol

from speechgw_client.audio import BYTES_PER_S

__all__ = ["KEEP_S", "RESUME_WINDOW_S", "AudioBacklog", "AudioSink", "LiveFeed"]

RESUME_WINDOW_S = 30.0  # the gateway's default RESUME_WINDOW_S (docs/configuration.md)
KEEP_S = RESUME_WINDOW_S + 5.0  # sent audio kept for a resume: the window, and a margin


class AudioBacklog:
    """The audio of a live source by its byte offset in the session (0: the session's first byte).

    Kept: every byte not sent yet (an outage loses nothing), and of the bytes sent the newest
    `keep_bytes`: a resume asks for the audio after what the gateway accepted, which trails what was
    sent by what was in flight when the connection dropped. Bytes before a resume's
    `resume_from_bytes` are not needed again (`acknowledge`). Dropping goes by `trim_step_bytes` at
    least, so the buffer is not moved for each block: at most `keep_bytes + trim_step_bytes` of sent
    audio are held."""

    def __init__(self, *, keep_bytes: int, trim_step_bytes: int = BYTES_PER_S) -> None:
        if keep_bytes < 0 or trim_step_bytes <= 0:
            raise ValueError(f"bad backlog bounds: keep {keep_bytes}, step {trim_step_bytes}")
        self.keep_bytes = keep_bytes
        self.trim_step_bytes = trim_step_bytes
        self.start = 0
        """the offset of the oldest byte kept"""
        self.sent = 0
        """the offset after the newest byte handed to a connection"""
        self.ended = False
        """the source has ended: no block comes after `end`"""
        self._buf = bytearray()

    @property
    def end(self) -> int:
        """The offset after the newest byte of the source."""
        return self.start + len(self._buf)

    @property
    def kept_bytes(self) -> int:
        return len(self._buf)

    def append(self, block: bytes) -> None:
        if self.ended:
            raise ValueError("the source has ended")
        self._buf += block

    def finish(self) -> None:
        self.ended = True

    def read(self, offset: int, max_bytes: int) -> bytes:
        """Up to `max_bytes` from `offset` (b"" when the source has nothing after it yet). Bytes before
        `start` were dropped: silence stands in for them, so the audio after them keeps its time."""
        if offset < self.start:
            return bytes(min(max_bytes, self.start - offset))
        at = offset - self.start
        return bytes(self._buf[at : at + max_bytes])

    def mark_sent(self, offset: int) -> None:
        """A connection took the audio up to `offset`: sent audio older than `keep_bytes` may go."""
        self.sent = max(self.sent, offset)
        self._drop_before(self.sent - self.keep_bytes)

    def acknowledge(self, offset: int) -> None:
        """The gateway has every byte before `offset` (a resume's `resume_from_bytes`)."""
        self._drop_before(offset)

    def _drop_before(self, offset: int) -> None:
        offset = min(offset, self.sent)  # audio not sent yet is never dropped
        if offset - self.start >= self.trim_step_bytes:
            del self._buf[: offset - self.start]
            self.start = offset


class AudioSink(Protocol):
    """Where a connection's audio goes (`Session.send`)."""

    async def send(self, pcm: bytes) -> None: ...


class LiveFeed:
    """A live source read into an `AudioBacklog` (`read`, one task for the whole stream) and sent
    over each connection in turn (`send`), in pieces of at most `chunk_bytes`, as fast as it comes."""

    def __init__(self, backlog: AudioBacklog, *, chunk_bytes: int) -> None:
        self.backlog = backlog
        self.chunk_bytes = chunk_bytes
        self._grown = asyncio.Event()

    async def read(self, blocks: AsyncIterable[bytes]) -> None:
        """Read the source to its end (or until cancelled); the backlog ends with it either way."""
        try:
            async for block in blocks:
                self.backlog.append(block)
                self._grown.set()
        finally:
            self.backlog.finish()
            self._grown.set()

    async def send(self, sink: AudioSink, offset: int, t0: float = 0.0) -> None:
        """Send the audio from `offset` (where the gateway's audio goes on) until the source ends: what
        waited in the backlog at once, then each block as it comes. `t0` is not read (a live source
        paces itself)."""
        self.backlog.acknowledge(offset)
        while True:
            self._grown.clear()
            data = self.backlog.read(offset, self.chunk_bytes)
            if data:
                await sink.send(data)
                offset += len(data)
                self.backlog.mark_sent(offset)
            elif self.backlog.ended:
                return
            else:
                await self._grown.wait()
