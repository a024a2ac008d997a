"""Denoise core (sans-I/O): framing, timeline, length contract, validation, delay (SPEC §3, §4)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from common.envconf import ConfigError, load_env
from services.denoise.config import DenoiseConfig
from services.denoise.core import (
    NS_PER_S,
    DenoiseSession,
    DenoiseStream,
    FrameIn,
    FrameOut,
    InvalidAudio,
    TooManyFlows,
    check_frame,
)
from tests.fakes import FakeDelayEngine

pytestmark = pytest.mark.unit


def frame(
    pcm: bytes,
    *,
    seq: int = 0,
    pts: int = 0,
    sr: int = 16_000,
    channels: int = 1,
    flow: str = "f1",
    last: bool = False,
) -> FrameIn:
    return FrameIn(flow, seq, sr, channels, pts, pcm, last)


def run_stream(stream: DenoiseStream, pcm: bytes, sizes: list[int], seq: int = 0, pts: int = 0) -> list[FrameOut]:
    out: list[FrameOut] = []
    pos = 0
    for size in sizes:
        f = frame(pcm[pos : pos + size], seq=seq, pts=pts)
        check_frame(f)
        out += stream.push(f)
        pos += size
    assert pos == len(pcm)
    return out + stream.finish()


def random_sizes(total_bytes: int, rng: random.Random) -> list[int]:
    sizes = []
    left = total_bytes
    while left:
        size = min(left, 2 * rng.randint(0, 1500))  # even sizes, empty messages included
        sizes.append(size)
        left -= size
    return sizes


def random_pcm(n_samples: int, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(-8000, 8000, n_samples, dtype=np.int16).astype("<i2").tobytes()


def check_timeline(outs: list[FrameOut], n_samples: int, base_seq: int, base_pts: int) -> None:
    assert outs[-1].last and outs[-1].pcm == b"" and outs[-1].ns == 0
    assert sum(o.last for o in outs) == 1
    start = 0
    for o in outs[:-1]:
        assert o.flow_id == "f1"
        assert o.pts_ns == base_pts + start * NS_PER_S // 16_000
        assert o.seq == base_seq + start // 320
        assert o.ns == len(o.pcm) // 2 * NS_PER_S // 16_000
        assert o.ns < 2**31  # AudioFrame.ns is int32
        start += len(o.pcm) // 2
    assert start == n_samples
    assert outs[-1].pts_ns == base_pts + n_samples * NS_PER_S // 16_000


@pytest.mark.parametrize("seed", range(8))
def test_fake_engine_output_equals_input_for_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 20_000)
    pcm = random_pcm(n, seed)
    stream = DenoiseStream(FakeDelayEngine(delay_samples=rng.randint(0, 700)))
    outs = run_stream(stream, pcm, random_sizes(len(pcm), rng), seq=7, pts=3 * NS_PER_S)
    check_timeline(outs, n, base_seq=7, base_pts=3 * NS_PER_S)
    # The engine's delay is removed: an identity engine gives the input back sample for sample.
    assert b"".join(o.pcm for o in outs) == pcm


def test_whole_frames_while_streaming_and_remainder_at_the_end() -> None:
    stream = DenoiseStream(FakeDelayEngine(delay_samples=0, block=1))
    pcm = random_pcm(1000)
    outs = run_stream(stream, pcm, [330 * 2, 670 * 2])
    assert [len(o.pcm) // 2 for o in outs] == [320, 640, 40, 0]


def test_long_message_is_split_below_the_int32_ns_limit() -> None:
    stream = DenoiseStream(FakeDelayEngine(delay_samples=0, block=1))
    pcm = random_pcm(16_000 * 5)
    outs = run_stream(stream, pcm, [len(pcm)])
    assert max(o.ns for o in outs) <= NS_PER_S
    check_timeline(outs, 16_000 * 5, 0, 0)


def test_empty_stream_ends_with_last_only() -> None:
    stream = DenoiseStream(FakeDelayEngine())
    outs = stream.finish()
    assert len(outs) == 1 and outs[0].last and outs[0].pcm == b""
    assert stream.finish() == []


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (frame(b"\0\0", sr=8000), "sr=8000"),
        (frame(b"\0\0", channels=2), "channels=2"),
        (frame(b"\0\0\0"), "odd byte count"),
        (frame(b"", sr=8000), "sr=8000"),
    ],
)
def test_invalid_frames_are_rejected(bad: FrameIn, needle: str) -> None:
    with pytest.raises(InvalidAudio, match=needle):
        check_frame(bad)


def test_bare_last_frame_may_leave_format_unset() -> None:
    check_frame(frame(b"", sr=0, channels=0, last=True))


def test_frames_after_the_end_of_a_flow_are_rejected() -> None:
    stream = DenoiseStream(FakeDelayEngine())
    stream.finish()
    with pytest.raises(InvalidAudio, match="after the end"):
        stream.push(frame(b"\0\0"))


class Pool:
    """Counts the engines handed out and taken back."""

    def __init__(self) -> None:
        self.made = 0
        self.returned: list[FakeDelayEngine] = []

    def acquire(self) -> FakeDelayEngine:
        if self.returned:
            return self.returned.pop()
        self.made += 1
        return FakeDelayEngine(delay_samples=50)

    def release(self, engine: FakeDelayEngine) -> None:
        self.returned.append(engine)


def test_session_keeps_interleaved_flows_apart_and_reuses_engines() -> None:
    pool = Pool()
    session = DenoiseSession(pool.acquire, pool.release, max_flows=2)  # type: ignore[arg-type]
    pcm = {"a": random_pcm(5000, 1), "b": random_pcm(3000, 2)}
    got: dict[str, list[FrameOut]] = {"a": [], "b": []}
    for pos in range(0, 10_000, 640):
        for flow in ("a", "b"):
            chunk = pcm[flow][pos : pos + 640]
            if chunk:
                f = FrameIn(flow, 0, 16_000, 1, 0, chunk, last=pos + 640 >= len(pcm[flow]))
                session.check(f)
                for out in session.process(f):
                    got[out.flow_id].append(out)
    for flow in ("a", "b"):
        assert got[flow][-1].last
        assert b"".join(o.pcm for o in got[flow]) == pcm[flow]
    assert session.flows == {} and pool.made == 2 and len(pool.returned) == 2
    session.check(FrameIn("c", 0, 16_000, 1, 0, b"\0\0"))  # flows that ended free their slot
    assert session.samples_in == session.samples_out == 8000


def test_session_limits_open_flows_and_flushes_all_at_half_close() -> None:
    pool = Pool()
    session = DenoiseSession(pool.acquire, pool.release, max_flows=2)  # type: ignore[arg-type]
    for flow in ("a", "b"):
        session.process(FrameIn(flow, 0, 16_000, 1, 0, random_pcm(100)))
    with pytest.raises(TooManyFlows):
        session.check(FrameIn("c", 0, 16_000, 1, 0, b""))
    outs = session.finish_all()
    assert sorted(o.flow_id for o in outs if o.last) == ["a", "b"]
    assert sum(len(o.pcm) for o in outs) == 400 and session.flows == {}


def test_config_defaults_and_errors() -> None:
    config = load_env(DenoiseConfig, {})
    assert (config.engine, config.num_threads, config.frame_samples) == ("gtcrn", 1, 320)
    assert load_env(DenoiseConfig, {"DENOISE_ENGINE": "RNNoise"}).engine == "rnnoise"
    with pytest.raises(ConfigError, match="DENOISE_ENGINE"):
        load_env(DenoiseConfig, {"DENOISE_ENGINE": "speex"})
    with pytest.raises(ConfigError, match="QUALITY"):
        load_env(DenoiseConfig, {"DENOISE_RNNOISE_RESAMPLE_QUALITY": "best"})
    with pytest.raises(ConfigError):
        load_env(DenoiseConfig, {"DENOISE_WORKERS": "0"})
