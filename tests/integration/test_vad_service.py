"""The real `python -m services.vad` process over gRPC on 127.0.0.1 (SPEC §3)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.launcher import RunningService, launch
from proto import common_pb2, vad_pb2_grpc
from tests.conftest import seconds, wait_for

pytestmark = pytest.mark.integration

SR = 16000
NS = 62_500
START, END = common_pb2.SPEECH_START, common_pb2.SPEECH_END
MAX_STREAMS = 3


@pytest.fixture(scope="module")
def vad() -> Iterator[RunningService]:
    svc = launch("vad", env={"VAD_MAX_STREAMS": str(MAX_STREAMS)}, timeout_s=seconds(60))
    try:
        yield svc
    finally:
        assert svc.stop() == 0


@pytest.fixture(scope="module")
def counting(clips: Path) -> bytes:
    x, sr = sf.read(clips / "en" / "counting.wav", dtype="float32")
    assert sr == SR
    return (np.clip(x, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()


def messages(flow: str, pcm: bytes, ms: int = 100) -> list[common_pb2.AudioFrame]:
    step = ms * SR // 1000 * 2
    out = [
        common_pb2.AudioFrame(
            flow_id=flow,
            seq=i // 640,
            sr=SR,
            channels=1,
            ns=len(pcm[i : i + step]) // 2 * NS,
            pts=i // 2 * NS,
            pcm=pcm[i : i + step],
        )
        for i in range(0, len(pcm), step)
    ]
    out[-1].last = True
    return out


def metric(vad: RunningService, name: str) -> float | None:
    with urllib.request.urlopen(f"{vad.http_base}/metrics", timeout=seconds(5)) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


async def converse(addr: str, frames: list[common_pb2.AudioFrame]) -> list[common_pb2.AudioFrame]:
    async with grpc.aio.insecure_channel(addr) as channel:
        call = vad_pb2_grpc.VadStub(channel).Stream(iter(frames), timeout=seconds(30))
        return [f async for f in call]


def check_counting(out: list[common_pb2.AudioFrame], flow: str) -> None:
    """counting.wav speaks from ~0.05 s to ~2.63 s (10 ms energy within 40 dB of its peak)."""
    assert [(f.activity, f.last) for f in out] == [(START, False), (END, False), (0, True)]
    assert all(f.flow_id == flow and f.sr == SR and f.channels == 1 and not f.pcm for f in out)
    assert abs(out[0].pts / 1e9 - 0.05) < 0.15
    assert abs(out[1].pts / 1e9 - 2.63) < 0.3
    assert out[0].seq < out[1].seq <= out[2].seq


async def test_counting_in_100ms_messages(vad: RunningService, counting: bytes) -> None:
    out = await converse(vad.grpc_addr, messages("count-1", counting))
    check_counting(out, "count-1")
    assert out[2].pts == len(counting) // 2 * NS


async def test_two_concurrent_streams(vad: RunningService, counting: bytes) -> None:
    a, b = await asyncio.gather(
        converse(vad.grpc_addr, messages("par-a", counting)),
        converse(vad.grpc_addr, messages("par-b", counting, ms=20)),
    )
    check_counting(a, "par-a")
    check_counting(b, "par-b")
    assert [f.pts for f in a] == [f.pts for f in b]  # boundaries do not depend on message size


async def test_invalid_frame_ends_only_its_own_stream(vad: RunningService, counting: bytes) -> None:
    msgs = messages("good", counting)
    async with grpc.aio.insecure_channel(vad.grpc_addr) as channel:
        stub = vad_pb2_grpc.VadStub(channel)
        good = stub.Stream(timeout=seconds(30))
        for m in msgs[:10]:
            await good.write(m)
        first = await good.read()
        assert first.activity == START
        for bad in (
            common_pb2.AudioFrame(flow_id="bad", sr=8000, channels=1, pcm=b"\x00" * 320),
            common_pb2.AudioFrame(flow_id="bad", sr=SR, channels=2, pcm=b"\x00" * 320),
            common_pb2.AudioFrame(flow_id="bad", sr=SR, channels=1, pcm=b"\x00" * 321),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await converse(vad.grpc_addr, [bad])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "bad" in (err.value.details() or "")
        for m in msgs[10:]:
            await good.write(m)
        await good.done_writing()
        rest = []
        while (reply := await good.read()) is not grpc.aio.EOF:
            rest.append(reply)
    check_counting([first, *rest], "good")


async def test_half_close_without_last_flushes(vad: RunningService, counting: bytes) -> None:
    msgs = messages("no-last", counting[: 2 * SR * 2])  # the first 2 s: speech is still going on
    msgs[-1].last = False
    out = await converse(vad.grpc_addr, msgs)
    assert [(f.activity, f.last) for f in out] == [(START, False), (END, False), (0, True)]
    assert out[1].pts == out[2].pts == 2 * 10**9


async def test_stream_limit_and_gauge(vad: RunningService) -> None:
    silence = common_pb2.AudioFrame(flow_id="idle", sr=SR, channels=1, pcm=b"\x00" * 640)
    async with grpc.aio.insecure_channel(vad.grpc_addr) as channel:
        stub = vad_pb2_grpc.VadStub(channel)
        calls = [stub.Stream(timeout=seconds(30)) for _ in range(MAX_STREAMS)]
        for call in calls:
            await call.write(silence)
        await asyncio.to_thread(
            wait_for, lambda: metric(vad, "vad_active_streams") == MAX_STREAMS, 10, "all streams open"
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await converse(vad.grpc_addr, [silence])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in calls:
            await call.done_writing()
            reply = await call.read()
            assert reply.last and await call.read() is grpc.aio.EOF
    await asyncio.to_thread(wait_for, lambda: metric(vad, "vad_active_streams") == 0, 10, "streams closed")


def test_health_and_metrics(vad: RunningService, counting: bytes) -> None:
    with grpc.insecure_channel(vad.grpc_addr) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=seconds(5))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        list(vad_pb2_grpc.VadStub(channel).Stream(iter(messages("m", counting)), timeout=seconds(30)))
    with urllib.request.urlopen(f"{vad.http_base}/healthz", timeout=seconds(5)) as resp:
        assert json.loads(resp.read())["status"] == "ok"
    count = metric(vad, "vad_latency_ms_count")
    assert count is not None and count >= len(messages("m", counting))
    assert (metric(vad, "vad_segments_total") or 0) >= 1


def test_unusable_model_exits_with_a_json_error(tmp_path: Path) -> None:
    bogus = tmp_path / "not_a_model.onnx"
    bogus.write_bytes(b"not an onnx file")
    env = dict(os.environ, VAD_MODEL_PATH=str(bogus))
    proc = subprocess.run(
        [sys.executable, "-m", "services.vad"], env=env, capture_output=True, timeout=seconds(60), check=False
    )
    assert proc.returncode == 3  # a valid configuration that cannot start (2 is a bad configuration)
    assert b"listening" not in proc.stdout
    assert b"Traceback" not in proc.stderr
    errors = [json.loads(line) for line in proc.stderr.decode().splitlines() if line.startswith("{")]
    assert any(e.get("err_code") == "model_probe_failed" and e["level"] == "error" for e in errors)
