import asyncio

import pytest

from orchestrator.core.reframer import AudioBlock
from orchestrator.stages.audio_paths import AudioPaths
from orchestrator.stages.base import StageFeed

pytestmark = pytest.mark.unit
FRAME = 640  # bytes of 20 ms


def block(seq: int, n_frames: int = 1, fill: int = 1) -> AudioBlock:
    return AudioBlock(seq, seq * 20_000_000, bytes([fill]) * FRAME * n_frames)


def drain(feed: StageFeed) -> bytes:
    async def go() -> bytes:
        return b"".join([b.pcm async for b in feed.blocks()])

    return asyncio.run(go())


def make(denoise: bool) -> tuple[AudioPaths, StageFeed, StageFeed, StageFeed | None]:
    paths = AudioPaths(16000)
    raw, clean = StageFeed(FRAME), StageFeed(FRAME)
    paths.raw["vad"] = raw
    paths.clean["asr"] = clean
    dn = StageFeed(FRAME) if denoise else None
    paths.denoise = dn
    return paths, raw, clean, dn


def test_without_denoise_clean_is_raw() -> None:
    paths, raw, clean, _ = make(denoise=False)
    for i in range(3):
        paths.push(block(i))
    paths.end_of_audio()
    assert drain(raw) == drain(clean) == b"\x01" * FRAME * 3


def test_with_denoise_clean_stages_get_the_denoised_audio() -> None:
    paths, raw, clean, dn = make(denoise=True)
    assert dn is not None
    for i in range(3):
        paths.push(block(i))
    paths.end_of_audio()
    assert drain(dn) == b"\x01" * FRAME * 3
    for i in range(3):
        paths.clean_audio(block(i, fill=9))
    paths.denoise_done()
    assert drain(clean) == b"\x09" * FRAME * 3
    assert drain(raw) == b"\x01" * FRAME * 3


def test_denoise_failure_replays_what_it_had_not_returned() -> None:
    paths, _, clean, _ = make(denoise=True)
    for i in range(4):
        paths.push(block(i))
    paths.clean_audio(AudioBlock(0, 0, b"\x09" * (FRAME + 100)))  # 1 frame + 50 samples came back
    paths.remove("denoise")
    paths.push(block(4, fill=2))
    paths.end_of_audio()
    got = drain(clean)
    # denoised part, then the raw remainder from the exact sample, then live raw audio
    assert got == b"\x09" * (FRAME + 100) + b"\x01" * (3 * FRAME - 100) + b"\x02" * FRAME


def test_denoise_failure_after_end_of_audio_closes_clean_feeds() -> None:
    paths, _, clean, _ = make(denoise=True)
    paths.push(block(0))
    paths.end_of_audio()
    paths.remove("denoise")
    assert drain(clean) == b"\x01" * FRAME


def test_a_tap_sees_every_block_as_it_is_put_even_those_before_it() -> None:
    """The archive spool's view of a feed: each block at once, not the feed's gathered messages; the
    stage may tap after the first blocks came (queued or still being gathered), and gets them too."""
    feed = StageFeed(FRAME * 3)
    for i in range(4):  # one message of three blocks queued, one block being gathered
        feed.put(block(i, fill=i + 1))
    tapped: list[bytes] = []
    feed.tap(tapped.append)
    assert tapped == [bytes([1]) * FRAME + bytes([2]) * FRAME + bytes([3]) * FRAME, bytes([4]) * FRAME]
    feed.put(block(4, fill=5))
    assert tapped[-1] == bytes([5]) * FRAME  # before the feed has a message to queue
    feed.close()
    feed.put(block(5, fill=6))  # nothing after the end
    assert b"".join(tapped) == drain(feed) == b"".join(bytes([n]) * FRAME for n in range(1, 6))
