"""The ASR stage's wire (orchestrator/stages/asr.py): what each stream's request queue receives."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.stages.asr import _drain, _Wire
from proto import asr_pb2

pytestmark = pytest.mark.unit


def frame(n: int) -> asr_pb2.ClientFrame:
    return asr_pb2.ClientFrame(opus=asr_pb2.OpusPacket(seq=n))


def drained(out: asyncio.Queue[asr_pb2.ClientFrame | None]) -> list[int | None]:
    items: list[int | None] = []
    while not out.empty():
        item = out.get_nowait()
        items.append(None if item is None else item.opus.seq)
    return items


def test_a_later_stream_hears_the_session_from_its_start() -> None:
    wire = _Wire()
    first: asyncio.Queue[asr_pb2.ClientFrame | None] = asyncio.Queue()
    wire.attach(first)
    wire.send(frame(1))
    second: asyncio.Queue[asr_pb2.ClientFrame | None] = asyncio.Queue()
    wire.attach(second)
    wire.send(frame(2))
    assert drained(first) == [1] and drained(second) == [1, 2]


def test_close_ends_the_request_stream_of_every_call_opened() -> None:
    """A call that failed by itself still has gRPC reading its requests: close() ends that read."""
    wire = _Wire()
    queues: list[asyncio.Queue[asr_pb2.ClientFrame | None]] = [asyncio.Queue(), asyncio.Queue()]
    for out in queues:
        wire.attach(out)
    wire.send(frame(7))
    wire.close()
    assert drained(queues[0]) == [None] and drained(queues[1]) == [7, None]


async def test_the_request_generator_finishes_once_closed() -> None:
    wire = _Wire()
    out: asyncio.Queue[asr_pb2.ClientFrame | None] = asyncio.Queue()
    wire.attach(out)
    wire.send(frame(3))
    reader = asyncio.create_task(_collect(out))
    await asyncio.sleep(0)
    assert not reader.done()  # waiting for more, as gRPC's request reader does
    wire.close()
    assert await asyncio.wait_for(reader, 5) == [3]


async def _collect(out: asyncio.Queue[asr_pb2.ClientFrame | None]) -> list[int]:
    return [f.opus.seq async for f in _drain(out)]
