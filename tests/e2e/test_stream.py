"""A real clip through the real gateway, VAD and archive: the skeleton's promise end to end."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.request

import pytest
import soundfile as sf

from devtools.client import stream_pcm
from devtools.stack import Stack
from speechgw_client import connect
from tests.e2e.conftest import records_of
from tests.poll import seconds
from tests.schemas import check_event

pytestmark = pytest.mark.e2e
ALL = ["lid", "asr", "record_url", "metrics", "vad"]


def test_clip_gives_ack_vad_record_url_metrics_end(stack: Stack, counting_pcm: bytes) -> None:
    result = asyncio.run(
        stream_pcm(stack.url, counting_pcm, speed=4.0, start={"flowId": "e2e-counting", "return": ALL})
    )
    for event in result.events:
        check_event(event)
        assert event["flowId"] == "e2e-counting"
    kinds = [e["type"] for e in result.events]
    assert kinds[0] == "ack" and kinds[-1] == "end", kinds
    assert kinds[-2] == "metrics" and "error" not in kinds
    assert result.close_code == 1000
    audio_s = len(counting_pcm) / 32000
    vad = result.of_type("vad")
    assert [v["event"] for v in vad][:1] == ["speech_start"] and vad[-1]["event"] == "speech_end"
    assert 0.0 <= vad[0]["ts"] < 0.5 and audio_s - 0.8 < vad[-1]["ts"] <= audio_s + 0.5
    (record,) = result.of_type("record_url")
    assert record["url"].startswith("http://")
    with urllib.request.urlopen(record["url"], timeout=seconds(10)) as resp:
        body = resp.read()
    data, rate = sf.read(io.BytesIO(body))
    assert rate == 16000
    assert abs(len(data) / rate - audio_s) <= 0.02  # within one frame
    metrics = result.of_type("metrics")[0]
    assert metrics["audio_s"] == pytest.approx(audio_s, abs=0.001)
    assert metrics["bytes_in"] == len(counting_pcm)
    assert metrics["speech_s"] > 1.0
    assert {"vad", "compress"} <= set(metrics["stages"])
    assert result.of_type("end")[0]["reason"] == "flush"


def test_same_flow_id_twice_is_idempotent(stack: Stack, counting_pcm: bytes) -> None:
    urls = []
    for _ in range(2):
        result = asyncio.run(
            stream_pcm(
                stack.url, counting_pcm[:16000], speed=0, start={"flowId": "e2e-twice", "return": ["record_url"]}
            )
        )
        urls += [e["url"] for e in result.of_type("record_url")]
    # One object: the same path (each URL carries its own expiry and signature).
    assert len(urls) == 2 and urls[0].split("?")[0] == urls[1].split("?")[0]
    stored = [p for p in records_of(stack).rglob("*") if p.is_file() and "e2e-twice" in p.name]
    assert len(stored) == 1


def test_odd_chunks_are_reframed(stack: Stack, counting_pcm: bytes) -> None:
    """Chunks of 7 ms plus one byte: the server re-frames and loses nothing."""
    result = asyncio.run(
        stream_pcm(stack.url, counting_pcm, speed=0, chunk_ms=7, start={"return": ["metrics", "record_url"]})
    )
    assert result.ok, result.events
    assert result.of_type("metrics")[0]["bytes_in"] == len(counting_pcm)
    assert result.of_type("record_url")[0]["duration_s"] == pytest.approx(len(counting_pcm) / 32000, abs=0.02)


def test_disconnect_without_flush_still_archives(stack: Stack, counting_pcm: bytes) -> None:
    async def go() -> None:
        async with connect(stack.url, token=stack.token(), flow_id="e2e-gone") as s:
            await anext(aiter(s.events()))  # ack
            await s.send(counting_pcm[:32000])
        # leaving the block closed the connection without a flush

    asyncio.run(go())
    from tests.conftest import wait_for

    wait_for(
        lambda: any("e2e-gone" in p.name for p in records_of(stack).rglob("*") if p.is_file()),
        10,
        "the archive of a session whose client vanished",
    )


def test_idle_flush(stack: Stack, counting_pcm: bytes) -> None:
    """FLUSH_IDLE_SEC=1 in this stack: audio then silence on the socket ends the session by itself."""
    result = asyncio.run(
        stream_pcm(stack.url, counting_pcm[:16000], speed=0, flush=False, start={"return": ["record_url"]})
    )
    assert result.of_type("end")[0]["reason"] == "idle"
    assert result.of_type("record_url") and result.close_code == 1000


def test_health_ready_and_metrics(stack: Stack) -> None:
    with urllib.request.urlopen(stack.http_base + "/healthz", timeout=seconds(5)) as resp:
        assert resp.status == 200
    from tests.conftest import wait_for

    def ready() -> bool:
        try:
            with urllib.request.urlopen(stack.http_base + "/readyz", timeout=seconds(5)) as resp:
                return resp.status == 200 and json.loads(resp.read())["ready"] is True
        except OSError:
            return False

    wait_for(ready, 10, "/readyz")
    with urllib.request.urlopen(stack.http_base + "/metrics", timeout=seconds(5)) as resp:
        text = resp.read().decode()
    for name in (
        "orchestrator_active_sessions",
        "ingress_bytes_total",
        "egress_events_total",
        "vad_latency_ms",
        "compress_latency_ms",
        "pcm_to_opus_fail_total",
    ):
        assert name in text


def test_gateway_without_stages_still_serves_the_protocol(stack: Stack, counting_pcm: bytes) -> None:
    """Every stage switched off: ack, the hinted language once, metrics, end."""
    from tests.e2e.conftest import extra_gateway

    with extra_gateway(stack, ENABLE_VAD="false", ENABLE_COMPRESS="false") as url:
        result = asyncio.run(
            stream_pcm(
                url,
                counting_pcm,
                speed=0,
                chunk_ms=40,
                start={"return": ["lid", "metrics"], "hints": {"user_lang_pref": "en"}},
            )
        )
    assert [e["type"] for e in result.events] == ["ack", "lid", "metrics", "end"]
    assert result.events[1]["source"] == "hint" and result.events[2]["stages"] == {}
