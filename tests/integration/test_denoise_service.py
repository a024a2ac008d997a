"""The Denoise service as a real process, once per engine (SPEC §3, §4): streams come back with the
same duration and a `last` frame; bad input ends only its own call; health and metrics are served."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.launcher import RunningService, launch
from proto import common_pb2, denoise_pb2_grpc
from tests.poll import seconds, wait_for

pytestmark = pytest.mark.integration

FRAME_BYTES = 640  # 20 ms of PCM16 at 16 kHz
NS_20MS = 20_000_000


@pytest.fixture(scope="module", params=["gtcrn", "rnnoise"])
def service(request: pytest.FixtureRequest) -> Iterator[RunningService]:
    svc = launch("denoise", env={"DENOISE_ENGINE": request.param, "DENOISE_WORKERS": "1"}, timeout_s=seconds(60))
    try:
        yield svc
    finally:
        assert svc.stop() == 0


@pytest.fixture
async def channel(service: RunningService) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(service.grpc_addr) as ch:
        yield ch


@pytest.fixture(scope="module")
def noisy_pcm(clips: Path) -> bytes:
    clean, sr = sf.read(clips / "en" / "quick_brown_fox.wav", dtype="float32")
    assert sr == 16_000
    noise = np.random.default_rng(3).normal(0, 1, clean.size)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2)) / np.sqrt(10 ** (5 / 10))  # 5 dB SNR
    return (np.clip(clean + noise, -1, 1) * 32767).astype("<i2").tobytes()


def frames(
    pcm: bytes, flow: str, *, per_message: int = 1, mark_last: bool = True, sr: int = 16_000
) -> list[common_pb2.AudioFrame]:
    step = FRAME_BYTES * per_message
    out = []
    for i, pos in enumerate(range(0, len(pcm), step)):
        chunk = pcm[pos : pos + step]
        out.append(
            common_pb2.AudioFrame(
                flow_id=flow,
                seq=i * per_message,
                sr=sr,
                channels=1,
                ns=len(chunk) // 2 * 62_500,
                pts=i * per_message * NS_20MS,
                pcm=chunk,
            )
        )
    if mark_last:
        out[-1].last = True
    return out


async def collect(call: grpc.aio.StreamStreamCall) -> list[common_pb2.AudioFrame]:
    out = []
    while (msg := await call.read()) is not grpc.aio.EOF:
        out.append(msg)
    return out


def check_output(outs: list[common_pb2.AudioFrame], pcm: bytes, flow: str) -> None:
    assert outs[-1].last and outs[-1].pcm == b""
    audio = outs[:-1]
    assert sum(len(o.pcm) for o in audio) == len(pcm)  # same duration back
    pts = 0
    for o in audio:
        assert (o.flow_id, o.sr, o.channels, o.pts, o.seq) == (flow, 16_000, 1, pts, pts // NS_20MS)
        pts += o.ns
    assert outs[-1].pts == pts == len(pcm) // 2 * 62_500


async def test_noisy_clip_comes_back_with_the_same_duration(channel: grpc.aio.Channel, noisy_pcm: bytes) -> None:
    stub = denoise_pb2_grpc.DenoiseStub(channel)
    outs = await collect(stub.Stream(iter(frames(noisy_pcm, "clip-1", per_message=3))))
    check_output(outs, noisy_pcm, "clip-1")
    denoised = np.frombuffer(b"".join(o.pcm for o in outs), "<i2").astype(np.float64)
    noisy = np.frombuffer(noisy_pcm, "<i2").astype(np.float64)
    assert np.mean(denoised**2) < 0.8 * np.mean(noisy**2)  # noise power went away


async def test_half_close_without_last_flushes(channel: grpc.aio.Channel, noisy_pcm: bytes) -> None:
    stub = denoise_pb2_grpc.DenoiseStub(channel)
    pcm = noisy_pcm[: 16_000 * 2 + 322]  # 0.5 s and a bit: not a whole number of frames
    outs = await collect(stub.Stream(iter(frames(pcm, "clip-2", mark_last=False))))
    check_output(outs, pcm, "clip-2")


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (common_pb2.AudioFrame(flow_id="bad", sr=8000, channels=1, pcm=b"\0\0"), "sr=8000"),
        (common_pb2.AudioFrame(flow_id="bad", sr=16_000, channels=2, pcm=b"\0\0"), "channels=2"),
        (common_pb2.AudioFrame(flow_id="bad", sr=16_000, channels=1, pcm=b"\0\0\0"), "odd byte count"),
    ],
)
async def test_invalid_input_ends_only_its_own_call(
    channel: grpc.aio.Channel, noisy_pcm: bytes, bad: common_pb2.AudioFrame, needle: str
) -> None:
    stub = denoise_pb2_grpc.DenoiseStub(channel)
    good = stub.Stream()
    msgs = frames(noisy_pcm, "good")
    for msg in msgs[:10]:
        await good.write(msg)
    first = await good.read()
    assert first.flow_id == "good"

    broken = stub.Stream(iter([bad]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(broken)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (err.value.details() or "")

    for msg in msgs[10:]:  # the last one has last=true: the flow ends without a half-close
        await good.write(msg)
    outs = [first]
    while not outs[-1].last:
        outs.append(await good.read())
    check_output(outs, noisy_pcm, "good")
    await good.done_writing()
    assert await good.read() is grpc.aio.EOF


async def test_health_and_metrics(service: RunningService, channel: grpc.aio.Channel, noisy_pcm: bytes) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = denoise_pb2_grpc.DenoiseStub(channel)
    await collect(stub.Stream(iter(frames(noisy_pcm[:6400], "metrics"))))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{service.http_base}/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["service"] == "denoise"
        async with http.get(f"{service.http_base}/metrics") as resp:
            text = await resp.text()
    count = [line for line in text.splitlines() if line.startswith("dn_latency_ms_count")]
    assert count and float(count[0].split()[-1]) > 0


def metric(base: str, name: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=seconds(5)) as resp:
        text = resp.read().decode()
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(values[0]) if values else float("nan")


async def test_cancelled_call_is_cleaned_up(
    service: RunningService, channel: grpc.aio.Channel, noisy_pcm: bytes
) -> None:
    stub = denoise_pb2_grpc.DenoiseStub(channel)
    call = stub.Stream()
    for msg in frames(noisy_pcm, "cancelled")[:10]:
        await call.write(msg)
    assert (await call.read()).flow_id == "cancelled"
    assert metric(service.http_base, "dn_active_streams") == 1
    call.cancel()
    wait_for(lambda: metric(service.http_base, "dn_active_streams") == 0, 10, "the call to end")
    outs = await collect(stub.Stream(iter(frames(noisy_pcm[:3200], "after"))))
    check_output(outs, noisy_pcm[:3200], "after")


async def test_stream_limit_gives_resource_exhausted(noisy_pcm: bytes) -> None:
    svc = launch("denoise", env={"DENOISE_ENGINE": "rnnoise", "DENOISE_MAX_STREAMS": "1"}, timeout_s=seconds(60))
    try:
        async with grpc.aio.insecure_channel(svc.grpc_addr) as ch:
            stub = denoise_pb2_grpc.DenoiseStub(ch)
            first = stub.Stream()
            msgs = frames(noisy_pcm[:6400], "first")
            await first.write(msgs[0])
            wait_for(lambda: metric(svc.http_base, "dn_active_streams") == 1, 10, "the first call")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect(stub.Stream(iter(frames(noisy_pcm[:640], "second"))))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for msg in msgs[1:]:
                await first.write(msg)
            await first.done_writing()
            check_output(await collect(first), noisy_pcm[:6400], "first")
    finally:
        assert svc.stop() == 0
