"""`python -m services.lid` as a real process: lid.v1.Lid/Detect over gRPC on loopback (SPEC §3, §4)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.launcher import RunningService, launch
from proto import common_pb2, lid_pb2_grpc
from tests.conftest import seconds

pytestmark = pytest.mark.integration

MAX_SESSIONS = 2


@pytest.fixture(scope="module")
def lid() -> Iterator[RunningService]:
    # A long idle timeout, so that only the early-answer policy can answer an open, silent client.
    env = {"LID_MAX_SESSIONS": str(MAX_SESSIONS), "LID_CPU_THREADS": "1", "LID_IDLE_TIMEOUT_S": "120"}
    svc = launch("lid", env=env, timeout_s=seconds(60))
    try:
        yield svc
    finally:
        assert svc.stop() == 0


@pytest.fixture
async def stub(lid: RunningService) -> AsyncIterator[lid_pb2_grpc.LidStub]:
    async with grpc.aio.insecure_channel(lid.grpc_addr) as channel:
        yield lid_pb2_grpc.LidStub(channel)


def clip_pcm(path: Path) -> bytes:
    audio, sr = sf.read(path, dtype="float32")
    assert sr == 16000
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2").tobytes()


def frames(pcm: bytes, flow_id: str, chunk_ms: int = 100, sr: int = 16000) -> list[common_pb2.AudioFrame]:
    """Messages of `chunk_ms` (several 20 ms frames each), timeline fields filled in."""
    step = chunk_ms * 32
    return [
        common_pb2.AudioFrame(
            flow_id=flow_id,
            seq=i // 640,
            sr=sr,
            channels=1,
            ns=len(c) // 2 * 62_500,
            pts=i // 2 * 62_500,
            pcm=c,
        )
        for i in range(0, len(pcm), step)
        for c in [pcm[i : i + step]]
    ]


@pytest.mark.parametrize(("clip", "lang"), [("zh/jishu.wav", "zh"), ("en/counting.wav", "en")])
async def test_clip_gives_its_language(stub: lid_pb2_grpc.LidStub, clips: Path, clip: str, lang: str) -> None:
    result = await stub.Detect(iter(frames(clip_pcm(clips / clip), f"flow-{lang}")), timeout=seconds(30))
    assert (result.flow_id, result.lang) == (f"flow-{lang}", lang)
    assert 0.5 < result.score <= 1.0
    assert 1000 <= result.audio_ms <= 3000


async def test_answers_early_while_the_client_still_streams(stub: lid_pb2_grpc.LidStub, clips: Path) -> None:
    msgs = frames(clip_pcm(clips / "zh" / "jishu.wav"), "early")
    call = stub.Detect(timeout=seconds(30))
    for msg in msgs[:12]:  # 1.2 s of 2.6 s; the stream stays open, nothing says "last"
        await call.write(msg)
    result = await asyncio.wait_for(call, seconds(15))
    assert result.lang == "zh" and result.score >= 0.9
    assert 1000 <= result.audio_ms <= 1200
    # The client may still be writing: gRPC refuses the write on its side, the server is unharmed.
    with pytest.raises(asyncio.InvalidStateError):
        await call.write(msgs[12])
    assert await call.code() == grpc.StatusCode.OK


async def test_half_close_answers_on_short_audio(stub: lid_pb2_grpc.LidStub, clips: Path) -> None:
    pcm = clip_pcm(clips / "zh" / "nihao_shijie.wav")[: 2 * 8000]  # 0.5 s, below LID_MIN_SECONDS
    result = await stub.Detect(iter(frames(pcm, "short")), timeout=seconds(30))
    assert 0 < result.audio_ms <= 500 and result.lang != ""


async def test_last_flag_answers_without_half_close(stub: lid_pb2_grpc.LidStub, clips: Path) -> None:
    msgs = frames(clip_pcm(clips / "en" / "hello_world.wav")[: 2 * 9600], "last")  # 0.6 s
    msgs[-1].last = True
    call = stub.Detect(timeout=seconds(30))
    for msg in msgs:
        await call.write(msg)
    result = await asyncio.wait_for(call, seconds(20))
    assert result.flow_id == "last" and 0 < result.audio_ms <= 600


async def test_no_audio_answers_empty(stub: lid_pb2_grpc.LidStub) -> None:
    result = await stub.Detect(iter([]), timeout=seconds(10))
    assert (result.lang, result.score, result.audio_ms) == ("", 0.0, 0)


@pytest.mark.parametrize(
    ("bad", "detail"),
    [({"sr": 8000}, "sr=8000"), ({"channels": 2}, "channels=2"), ({"pcm": b"\x00" * 3, "ns": 0}, "3 bytes")],
)
async def test_invalid_input_ends_only_its_call(
    stub: lid_pb2_grpc.LidStub, clips: Path, bad: dict[str, object], detail: str
) -> None:
    good = frames(clip_pcm(clips / "en" / "counting.wav"), "good")
    other = stub.Detect(timeout=seconds(30))
    await other.write(good[0])  # a concurrent call, open before the bad one
    msg = frames(b"\x00\x00" * 320, "bad")[0]
    for key, value in bad.items():
        setattr(msg, key, value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Detect(iter([msg]), timeout=seconds(10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (err.value.details() or "")
    for msg in good[1:]:
        await other.write(msg)
    await other.done_writing()
    result = await asyncio.wait_for(other, seconds(20))
    assert result.lang == "en"


async def test_speech_after_a_silent_lead_in_gives_its_language(
    lid: RunningService, stub: lid_pb2_grpc.LidStub, clips: Path
) -> None:
    pcm = bytes(2 * 16000 * 2) + clip_pcm(clips / "en" / "counting.wav")  # 2 s of digital silence first
    result = await stub.Detect(iter(frames(pcm, "lead-in")), timeout=seconds(30))
    assert result.lang == "en" and result.score >= 0.5
    assert 1000 <= result.audio_ms <= 3000  # of speech


def white_noise(seconds_: float, sd: float) -> bytes:
    rng = np.random.default_rng(7)
    return rng.normal(0.0, sd, int(16000 * seconds_)).clip(-32768, 32767).astype("<i2").tobytes()


async def test_silence_answers_und_without_a_detection(lid: RunningService, stub: lid_pb2_grpc.LidStub) -> None:
    before = await metric(lid, "lid_inference_ms_count")
    result = await stub.Detect(iter(frames(bytes(2 * 16000 * 4), "silence")), timeout=seconds(30))
    assert (result.flow_id, result.lang, result.score, result.audio_ms) == ("silence", "und", 0.0, 0)
    assert await metric(lid, "lid_inference_ms_count") == before  # no detect_language call


@pytest.mark.parametrize("sd", [300.0, 3000.0, 10000.0])
async def test_white_noise_answers_und(stub: lid_pb2_grpc.LidStub, sd: float) -> None:
    result = await stub.Detect(iter(frames(white_noise(4.0, sd), "noise")), timeout=seconds(30))
    assert result.lang == "und" and result.score < 0.5


async def metric(lid: RunningService, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{lid.http_base}/metrics") as resp:
        text = await resp.text()
    return float(next(line for line in text.splitlines() if line.startswith(name + " ")).split()[-1])


async def test_sessions_past_the_limit_get_resource_exhausted(lid: RunningService, stub: lid_pb2_grpc.LidStub) -> None:
    quiet = frames(b"\x00\x00" * 1600, "hold")[0]  # 0.1 s: nobody answers yet
    held = [stub.Detect(timeout=seconds(30)) for _ in range(MAX_SESSIONS)]
    for call in held:
        await call.write(quiet)
    deadline = asyncio.get_running_loop().time() + seconds(10)
    while await metric(lid, "lid_active_sessions") < MAX_SESSIONS:  # both handlers are running
        assert asyncio.get_running_loop().time() < deadline, "held calls never became active"
        await asyncio.sleep(0.02)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Detect(iter([quiet]), timeout=seconds(10))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for call in held:
        await call.done_writing()
        assert (await asyncio.wait_for(call, seconds(20))).lang == "und"
    result = await stub.Detect(iter([quiet]), timeout=seconds(10))  # a slot is free again
    assert result.lang == "und"


async def test_health_and_metrics(lid: RunningService, stub: lid_pb2_grpc.LidStub, clips: Path) -> None:
    async with grpc.aio.insecure_channel(lid.grpc_addr) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await stub.Detect(iter(frames(clip_pcm(clips / "zh" / "jishu.wav"), "m")), timeout=seconds(30))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{lid.http_base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{lid.http_base}/metrics") as resp:
            text = await resp.text()
    count = next(line for line in text.splitlines() if line.startswith("lid_latency_ms_count"))
    assert float(count.split()[-1]) >= 1
    assert 'lid_results_total{lang="zh",reason="confident"}' in text
    assert "lid_inference_ms_bucket" in text


async def test_idle_client_gets_an_answer_on_what_it_sent(clips: Path) -> None:
    svc = launch("lid", env={"LID_IDLE_TIMEOUT_S": "0.5"}, timeout_s=seconds(60))
    try:
        async with grpc.aio.insecure_channel(svc.grpc_addr) as channel:
            call = lid_pb2_grpc.LidStub(channel).Detect(timeout=seconds(30))
            for msg in frames(clip_pcm(clips / "en" / "counting.wav"), "idle")[:4]:  # 0.4 s, then silence
                await call.write(msg)
            result = await asyncio.wait_for(call, seconds(10))
        assert result.flow_id == "idle" and 0 < result.audio_ms <= 400
    finally:
        assert svc.stop() == 0
