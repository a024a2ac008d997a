"""`LidServicer` on an in-process grpc.aio server (127.0.0.1:0) with a fake engine: the engine-failure
path, which the real model cannot be made to take (SPEC §3: bad outcomes end only their own call)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from proto import common_pb2, lid_pb2_grpc
from services.lid.config import LidConfig
from services.lid.engine import LanguageDetector
from services.lid.servicer import LidServicer
from services.lid.speech import WINDOW_SAMPLES
from tests.fakes import FakeLidEngine, FakeSpeechProbability
from tests.poll import seconds

pytestmark = pytest.mark.integration

POISON = b"\xff\x7f"  # a flow whose audio starts with this sample makes the fake engine fail


@pytest.fixture
async def stub() -> AsyncIterator[lid_pb2_grpc.LidStub]:
    executor, vad_executor = ThreadPoolExecutor(max_workers=1), ThreadPoolExecutor(max_workers=1)
    server = grpc.aio.server()
    detector = LanguageDetector(FakeLidEngine(fail_on=POISON))  # English, but fails on POISON
    servicer = LidServicer(LidConfig(), executor, detector, vad_executor, FakeSpeechProbability)
    lid_pb2_grpc.add_LidServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield lid_pb2_grpc.LidStub(channel)
    finally:
        await server.stop(None)
        executor.shutdown(wait=True)
        vad_executor.shutdown(wait=True)


def second_of(first_sample: bytes, flow_id: str) -> common_pb2.AudioFrame:
    pcm = first_sample + b"\x00\x00" * 15999
    return common_pb2.AudioFrame(flow_id=flow_id, sr=16000, channels=1, ns=1_000_000_000, pcm=pcm)


async def test_engine_failure_is_internal_and_ends_only_its_call(stub: lid_pb2_grpc.LidStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Detect(iter([second_of(POISON, "poison")]), timeout=seconds(10))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "fake engine failure" in (err.value.details() or "")
    result = await stub.Detect(iter([second_of(b"\x00\x00", "fine")]), timeout=seconds(10))
    # All 31 whole VAD windows of the second are speech to the fake VAD; the last 8 ms are not a window.
    assert (result.flow_id, result.lang, result.audio_ms) == ("fine", "en", 31 * WINDOW_SAMPLES // 16)
    assert result.score == pytest.approx(0.95)
