import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core.reframer import Reframer

pytestmark = pytest.mark.unit
FRAME = 640


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


@given(n_bytes=st.integers(0, 20 * FRAME), cuts=st.lists(st.integers(0, 10**6), max_size=40))
@settings(max_examples=300, deadline=None)
def test_any_split_gives_the_same_frames_and_timeline(n_bytes: int, cuts: list[int]) -> None:
    data = bytes(i % 251 for i in range(n_bytes))
    r = Reframer()
    blocks = [b for chunk in _split(data, cuts) if (b := r.feed(chunk)) is not None]
    last, odd = r.flush()
    if last is not None:
        blocks.append(last)
    assert b"".join(b.pcm for b in blocks) == data[: n_bytes - n_bytes % 2]
    assert odd == n_bytes % 2
    # every block but the last holds whole frames, and seq/pts follow the sample count
    samples = 0
    for i, b in enumerate(blocks):
        if i < len(blocks) - 1 or last is None:
            assert len(b.pcm) % FRAME == 0
        assert b.pts_ns == samples * 1_000_000_000 // 16000
        assert b.seq == samples // 320
        samples += b.samples


def test_odd_byte_waits_for_its_partner() -> None:
    r = Reframer()
    assert r.feed(b"\x01" * 639) is None
    block = r.feed(b"\x02")
    assert block is not None and len(block.pcm) == 640 and r.pending_bytes == 0


def test_whole_frames_take_the_fast_path_and_keep_counting() -> None:
    r = Reframer()
    a = r.feed(b"\x00" * 1280)
    b = r.feed(b"\x00" * 640)
    assert a is not None and b is not None
    assert (a.seq, b.seq) == (0, 2)
    assert b.pts_ns == 40_000_000


def test_flush_returns_short_last_block() -> None:
    r = Reframer()
    r.feed(b"\x00" * 700)
    last, odd = r.flush()
    assert last is not None and len(last.pcm) == 60 and odd == 0
