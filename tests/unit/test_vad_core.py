"""Sans-I/O VAD core on real clip audio and the real Silero model (no sockets, no processes)."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.envconf import ConfigError, load_env
from proto import common_pb2
from services.vad.config import VadConfig
from services.vad.core import MIN_SILENCE_KEY, InvalidFrame, TooManyFlows, VadSession, call_config
from services.vad.detector import DetectorPool, make_detector

pytestmark = pytest.mark.unit

SR = 16000
NS = 62_500  # per sample
START, END = common_pb2.SPEECH_START, common_pb2.SPEECH_END
CONFIG = VadConfig()


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()


def load(path: Path) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32")
    assert sr == SR
    return x


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


@pytest.fixture(scope="module")
def two_utterances(clips: Path) -> np.ndarray:
    """0.5 s silence, counting, 1 s silence, hello world, 1 s silence: two segments."""
    return np.concatenate(
        [
            silence(0.5),
            load(clips / "en" / "counting.wav"),
            silence(1.0),
            load(clips / "en" / "hello_world.wav"),
            silence(1.0),
        ]
    )


def session(config: VadConfig = CONFIG) -> VadSession:
    return VadSession(config, lambda: make_detector(config))


def frames(
    flow: str, audio: bytes, sizes: list[int], first_pts: int = 0, last: bool = True
) -> list[common_pb2.AudioFrame]:
    """Cut `audio` into messages of the given sample counts (cycled), as a client would send them."""
    out, pos, i = [], 0, 0
    while pos < len(audio) // 2:
        n = sizes[i % len(sizes)]
        chunk = audio[pos * 2 : (pos + n) * 2]
        out.append(
            common_pb2.AudioFrame(
                flow_id=flow,
                seq=pos // 320,
                sr=SR,
                channels=1,
                ns=len(chunk) // 2 * NS,
                pts=first_pts + pos * NS,
                pcm=chunk,
            )
        )
        pos += n
        i += 1
    out[-1].last = last
    return out


def run(sess: VadSession, msgs: list[common_pb2.AudioFrame]) -> list[common_pb2.AudioFrame]:
    out = []
    for m in msgs:
        out.extend(sess.process(m))
    return out


def bounds(out: list[common_pb2.AudioFrame]) -> list[tuple[int, int]]:
    return [(f.activity, f.pts) for f in out if f.activity]


def test_two_utterances_give_two_segments_near_the_speech(two_utterances: np.ndarray) -> None:
    out = run(session(), frames("a", pcm16(two_utterances), [320]))
    b = bounds(out)
    assert [a for a, _ in b] == [START, END, START, END]
    counting_end = 0.5 + 2.63  # where the energy of counting.wav fades (docs/services/vad.md)
    hello_start = 0.5 + 2.986 + 1.0 + 0.05
    assert abs(b[0][1] / 1e9 - 0.55) < 0.15
    assert abs(b[1][1] / 1e9 - counting_end) < 0.3
    assert abs(b[2][1] / 1e9 - hello_start) < 0.15
    assert out[-1].last and not out[-1].activity
    assert out[-1].pts == two_utterances.size * NS
    assert all(f.flow_id == "a" and f.sr == SR and f.channels == 1 and not f.pcm for f in out)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_chunk_sizes_give_the_same_boundaries(two_utterances: np.ndarray, seed: int) -> None:
    audio = pcm16(two_utterances)
    reference = bounds(run(session(), frames("a", audio, [320])))
    rng = random.Random(seed)
    sizes = [rng.randint(1, 4000) for _ in range(50)]
    assert bounds(run(session(), frames("a", audio, sizes))) == reference


def test_start_is_emitted_while_speech_continues(two_utterances: np.ndarray) -> None:
    sess = session()
    msgs = frames("a", pcm16(two_utterances), [1600])
    emitted_at = None
    for m in msgs:
        if any(f.activity == START for f in sess.process(m)):
            emitted_at = m.pts + m.ns
            break
    # counting.wav speaks from 0.55 s to 3.13 s here: START must come long before the segment ends.
    assert emitted_at is not None and emitted_at / 1e9 < 1.2


def test_boundary_seq_is_the_input_message_seq(two_utterances: np.ndarray) -> None:
    msgs = frames("a", pcm16(two_utterances), [1600])
    sess = session()
    for m in msgs:
        for f in sess.process(m):
            assert f.seq == m.seq


def test_a_pooled_detector_serves_the_next_flows_as_a_new_one(two_utterances: np.ndarray) -> None:
    """A detector given back mid-speech (half-close) and after a whole flow is reset: the flows it
    serves next get exactly the boundaries of a fresh detector."""
    audio = pcm16(two_utterances)
    reference = bounds(run(session(), frames("a", audio, [1600])))
    pool = DetectorPool(make_detector, limit=1)
    sess = VadSession(CONFIG, lambda: pool.take(CONFIG), lambda d: pool.give(CONFIG, d))
    run(sess, frames("cut", audio[: len(audio) // 3], [1600], last=False))
    sess.finish_all()  # given back with speech open
    for flow in ("b", "c"):
        assert bounds(run(sess, frames(flow, audio, [1600]))) == reference
    assert pool.built == 1 and pool.idle == 1


def test_the_pool_keeps_at_most_its_limit_and_one_per_config() -> None:
    pool = DetectorPool(make_detector, limit=1)
    other = replace(CONFIG, min_silence_ms=800)
    a, b = pool.take(CONFIG), pool.take(CONFIG)
    pool.give(CONFIG, a)
    pool.give(CONFIG, b)  # over the limit: dropped
    assert pool.idle == 1 and pool.take(CONFIG) is a
    pool.give(CONFIG, a)
    assert pool.take(other) is not a  # another config's settings are in its model: a new one
    assert pool.built == 3


@pytest.mark.parametrize("level", [0.0, 10 ** (-50 / 20)])
def test_silence_and_low_noise_give_no_speech(level: float) -> None:
    noise = np.random.default_rng(7).uniform(-1, 1, 5 * SR).astype(np.float32) * level * np.sqrt(3)
    out = run(session(), frames("q", pcm16(noise), [320]))
    assert len(out) == 1 and out[0].last and not out[0].activity


def test_flows_on_one_session_are_independent(clips: Path, two_utterances: np.ndarray) -> None:
    other = np.concatenate([silence(1.2), load(clips / "zh" / "jishu.wav"), silence(1.0)])
    a = frames("a", pcm16(two_utterances), [320], first_pts=0)
    b = frames("b", pcm16(other), [800], first_pts=5_000_000_000)
    alone_a, alone_b = bounds(run(session(), a)), bounds(run(session(), b))
    interleaved: list[common_pb2.AudioFrame] = []
    for i in range(max(len(a), len(b))):
        interleaved += [m for m in (a[i : i + 1] + b[i : i + 1])]
    out = run(session(), interleaved)
    assert bounds([f for f in out if f.flow_id == "a"]) == alone_a
    assert bounds([f for f in out if f.flow_id == "b"]) == alone_b
    assert alone_b[0][1] > 5_000_000_000 + 1_000_000_000  # b's timeline starts at its first pts
    assert sum(1 for f in out if f.last) == 2


def test_half_close_inside_speech_ends_the_segment_at_the_end_of_audio(clips: Path) -> None:
    speech = np.concatenate([silence(0.5), load(clips / "en" / "counting.wav")[: int(1.5 * SR)]])
    sess = session()
    out = run(sess, frames("a", pcm16(speech), [320], first_pts=1000, last=False))
    assert [f.activity for f in out] == [START]
    tail = sess.finish_all()
    assert [(f.activity, f.last) for f in tail] == [(END, False), (0, True)]
    assert tail[0].pts == tail[1].pts == 1000 + speech.size * NS
    assert sess.flows == {}


def test_last_drops_the_flow_and_a_reused_id_starts_fresh(two_utterances: np.ndarray) -> None:
    sess = session()
    audio = pcm16(two_utterances)
    first = bounds(run(sess, frames("a", audio, [320])))
    assert sess.flows == {}
    again = bounds(run(sess, frames("a", audio, [320], first_pts=10**10)))
    assert [(a, p - 10**10) for a, p in again] == first


def test_pads_move_boundaries_and_stay_inside_the_audio(two_utterances: np.ndarray) -> None:
    audio = pcm16(two_utterances)
    plain = bounds(run(session(), frames("a", audio, [320])))
    padded_cfg = replace(CONFIG, pad_start_ms=100, pad_end_ms=100)
    padded = bounds(run(session(padded_cfg), frames("a", audio, [320])))
    assert [a for a, _ in padded] == [a for a, _ in plain]
    for (act, p0), (_, p1) in zip(plain, padded, strict=True):
        assert p1 - p0 == (-100_000_000 if act == START else 100_000_000)
    huge = replace(CONFIG, pad_start_ms=5000, pad_end_ms=5000)
    b = bounds(run(session(huge), frames("a", audio, [320])))
    assert b[0][1] == 0  # never before the flow's first sample
    assert all(x[1] <= y[1] for x, y in itertools.pairwise(b))  # segments never overlap
    assert b[-1][1] <= two_utterances.size * NS


def test_segments_longer_than_max_speech_are_cut(clips: Path) -> None:
    speech = np.concatenate([silence(0.5), load(clips / "en" / "counting.wav")[: int(2.5 * SR)], silence(1)])
    b = bounds(run(session(replace(CONFIG, max_speech_s=0.8)), frames("a", pcm16(speech), [320])))
    assert [a for a, _ in b] == [START, END] * (len(b) // 2) and len(b) >= 6
    spans = [(b[i][1], b[i + 1][1]) for i in range(0, len(b), 2)]
    assert all(0 < end - start <= 800_000_000 for start, end in spans)
    assert all(p0 <= p1 for (_, p0), (_, p1) in itertools.pairwise(b))


@pytest.mark.parametrize(
    ("change", "needle"),
    [({"sr": 8000}, "sr=8000"), ({"channels": 2}, "channels=2"), ({"pcm": b"\x00" * 641}, "odd")],
)
def test_invalid_frames_are_rejected(change: dict[str, object], needle: str) -> None:
    frame = common_pb2.AudioFrame(flow_id="a", sr=SR, channels=1, pcm=b"\x00" * 640)
    for key, value in change.items():
        setattr(frame, key, value)
    with pytest.raises(InvalidFrame, match=needle):
        session().process(frame)


def test_an_audio_less_last_frame_needs_no_format() -> None:
    sess = session()
    out = sess.process(common_pb2.AudioFrame(flow_id="a", pts=42, last=True))
    assert len(out) == 1 and out[0].last and out[0].pts == 42


def test_flow_limit_per_stream() -> None:
    sess = session(replace(CONFIG, max_flows_per_stream=2))
    for flow in ("a", "b"):
        sess.process(common_pb2.AudioFrame(flow_id=flow, sr=SR, channels=1, pcm=b"\x00" * 640))
    with pytest.raises(TooManyFlows):
        sess.process(common_pb2.AudioFrame(flow_id="c", sr=SR, channels=1, pcm=b"\x00" * 640))
    sess.process(common_pb2.AudioFrame(flow_id="a", last=True))
    sess.process(common_pb2.AudioFrame(flow_id="c", sr=SR, channels=1, pcm=b"\x00" * 640))


def test_config_from_env() -> None:
    cfg = load_env(VadConfig, {"VAD_THRESHOLD": "0.6", "VAD_MIN_SILENCE_MS": "500", "VAD_MAX_STREAMS": "3"})
    assert (cfg.threshold, cfg.min_silence_ms, cfg.max_streams) == (0.6, 500, 3)
    assert load_env(VadConfig, {}) == VadConfig()
    assert VadConfig().window_samples == 512
    for env in (
        {"VAD_THRESHOLD": "1.5"},
        {"VAD_CHUNK_MS": "0"},
        {"VAD_PAD_END_MS": "-1"},
        {"VAD_MAX_STREAMS": "many"},
    ):
        with pytest.raises(ConfigError):
            load_env(VadConfig, env)


def test_a_call_s_min_silence_joins_what_the_default_splits(two_utterances: np.ndarray) -> None:
    """A session's `endpointing` (call metadata `vad-min-silence-ms`): 1.5 s of silence to end a
    segment hears the 1 s pause between the utterances as part of one."""
    config = call_config(CONFIG, [("other", "x"), (MIN_SILENCE_KEY, "1500")])
    assert config.min_silence_ms == 1500 and call_config(CONFIG, []) is CONFIG
    b = bounds(run(session(config), frames("a", pcm16(two_utterances), [320])))
    assert [a for a, _ in b] == [START, END]


@pytest.mark.parametrize("value", ["", "-1", "10001", "1e3", b"\xff"])
def test_a_bad_min_silence_is_refused(value: str | bytes) -> None:
    with pytest.raises(InvalidFrame):
        call_config(CONFIG, [(MIN_SILENCE_KEY, value)])
