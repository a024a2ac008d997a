"""A live source over several connections without sockets (speechgw_client/live.py): the backlog keeps
what a resume may ask for and no more, and the feed sends on after a drop from where the gateway
asks, with what the source recorded during the outage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from speechgw_client import SessionClosed
from speechgw_client.live import AudioBacklog, LiveFeed
from tests.poll import seconds, until

pytestmark = pytest.mark.unit
AUDIO = bytes(range(256)) * 40  # 10240 bytes, each offset recognisable


def test_the_backlog_keeps_what_is_unsent_and_a_window_of_what_was_sent() -> None:
    backlog = AudioBacklog(keep_bytes=1000, trim_step_bytes=100)
    for off in range(0, len(AUDIO), 64):
        backlog.append(AUDIO[off : off + 64])
        backlog.mark_sent(max(0, off - 2000))  # the sender trails the source by 2000 bytes
        assert backlog.kept_bytes <= 2064 + 1000 + 100  # unsent, the window, one step
        assert backlog.start <= backlog.sent - 1000 or backlog.start == 0
    assert backlog.end == len(AUDIO)
    sent = backlog.sent
    assert backlog.read(sent - 1000, 10_000) == AUDIO[sent - 1000 :]  # a resume within the window
    assert backlog.read(len(AUDIO), 640) == b""  # nothing recorded after it yet


def test_a_resume_ack_drops_what_the_gateway_has_but_never_what_is_unsent() -> None:
    backlog = AudioBacklog(keep_bytes=100_000, trim_step_bytes=100)
    backlog.append(AUDIO)
    backlog.mark_sent(3000)
    backlog.acknowledge(2500)
    assert (backlog.start, backlog.read(2500, 10)) == (2500, AUDIO[2500:2510])
    backlog.acknowledge(9000)  # more than was sent: only the sent part goes
    assert backlog.start == 3000 and backlog.end == len(AUDIO)
    backlog.acknowledge(3050)  # less than a step: kept for now
    assert backlog.start == 3000


def test_audio_dropped_before_a_resume_asks_for_it_is_silence() -> None:
    backlog = AudioBacklog(keep_bytes=0, trim_step_bytes=1)
    backlog.append(AUDIO[:100])
    backlog.mark_sent(100)
    assert backlog.start == 100
    assert backlog.read(40, 1000) == bytes(60)  # keeps the time of what follows


def test_bad_bounds_and_audio_after_the_end_are_refused() -> None:
    with pytest.raises(ValueError):
        AudioBacklog(keep_bytes=-1)
    with pytest.raises(ValueError):
        AudioBacklog(keep_bytes=0, trim_step_bytes=0)
    backlog = AudioBacklog(keep_bytes=0)
    backlog.finish()
    with pytest.raises(ValueError):
        backlog.append(b"\0\0")


class Connection:
    """A connection's audio: what it took, until it has `drops_after` bytes (then it is gone)."""

    def __init__(self, drops_after: int | None = None) -> None:
        self.data = bytearray()
        self.drops_after = drops_after

    async def send(self, pcm: bytes) -> None:
        if self.drops_after is not None and len(self.data) >= self.drops_after:
            raise SessionClosed(1006, "")
        self.data += pcm


async def test_the_feed_goes_on_after_a_drop_with_what_was_recorded_meanwhile() -> None:
    recorded: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def device() -> AsyncGenerator[bytes, None]:
        while (block := await recorded.get()) is not None:
            yield block

    def record(until_byte: int, start: int) -> None:
        for off in range(start, until_byte, 512):
            recorded.put_nowait(AUDIO[off : min(off + 512, until_byte)])

    feed = LiveFeed(AudioBacklog(keep_bytes=4096, trim_step_bytes=512), chunk_bytes=640)
    reading = asyncio.create_task(feed.read(device()))
    first = Connection(drops_after=3000)
    record(4096, 0)
    with pytest.raises(SessionClosed):
        await asyncio.wait_for(feed.send(first, 0), seconds(5))
    assert 3000 <= len(first.data) < 3000 + 640  # the chunks it took before it was gone
    record(8192, 4096)  # recorded while no connection is up
    await until(lambda: feed.backlog.end == 8192, 5, "the outage's blocks in the backlog")
    second = Connection()
    resumed = asyncio.create_task(feed.send(second, 2000))  # the gateway accepted 2000 bytes of the 3200
    record(len(AUDIO), 8192)
    recorded.put_nowait(None)  # the capture stops
    await asyncio.wait_for(resumed, seconds(5))
    await reading
    assert bytes(first.data[:2000] + second.data) == AUDIO
    assert feed.backlog.ended and feed.backlog.start >= len(AUDIO) - 4096 - 512
