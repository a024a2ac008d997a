"""The whole stack with TLS on: wss:// at the gateway, mTLS on every gRPC link (VAD, ASR, archive), HTTPS on
the archive's records, all from one throwaway CA (devtools/certs.py). A real clip is transcribed through it."""

from __future__ import annotations

import asyncio
import io
import os
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.client import stream_pcm
from devtools.stack import Stack
from speechgw_client import ConnectError, load_audio
from tests.poll import seconds
from tests.schemas import check_event
from tests.wer import wer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"LOG_LEVEL": "WARNING", "ASR_ENGINE": "whisper", "ASR_MODEL": "tiny.en", "STORAGE_BACKEND": "local"}
    with Stack(("vad", "asr", "compress"), env=env, workdir=tmp_path_factory.mktemp("tls"), tls=True) as stack:
        yield stack


def test_a_clip_is_transcribed_and_archived_over_wss_and_mtls(tls_stack: Stack, clips: Path) -> None:
    assert tls_stack.url.startswith("wss://") and tls_stack.ca_file is not None
    pcm = load_audio(clips / "en" / "quick_brown_fox.wav")
    result = asyncio.run(
        stream_pcm(
            tls_stack.url,
            pcm,
            speed=0,
            start={"flowId": "e2e-tls", "return": ["asr", "record_url", "metrics", "vad"]},
            ca_file=tls_stack.ca_file,
        )
    )
    for event in result.events:
        check_event(event)
    assert result.ok and result.close_code == 1000, result.events
    text = " ".join(e["text"] for e in result.of_type("asr_final"))
    assert wer([(clips / "en" / "quick_brown_fox.txt").read_text()], [text]) <= 0.12, text
    assert {"vad", "asr", "compress"} <= set(result.of_type("metrics")[0]["stages"])
    (record,) = result.of_type("record_url")
    assert record["url"].startswith("https://")
    trusting = ssl.create_default_context(cafile=str(tls_stack.ca_file))
    with urllib.request.urlopen(record["url"], timeout=seconds(10), context=trusting) as resp:
        data, rate = sf.read(io.BytesIO(resp.read()))
    assert rate == 16000 and abs(len(data) / rate - len(pcm) / 32000) <= 0.02


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_stack: Stack) -> None:
    with pytest.raises(ConnectError) as refused:
        asyncio.run(stream_pcm(tls_stack.url, b"\0" * 640, speed=0))
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)


@pytest.mark.parametrize("service", ["vad", "asr", "compress"])
def test_every_service_refuses_a_client_without_a_certificate(tls_stack: Stack, service: str) -> None:
    assert tls_stack.ca_file is not None
    creds = grpc.ssl_channel_credentials(tls_stack.ca_file.read_bytes())
    with (
        grpc.secure_channel(tls_stack.running[service].grpc_addr, creds) as channel,
        pytest.raises(grpc.RpcError) as err,
    ):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=seconds(5))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_the_cli_streams_over_wss_with_the_ca(tls_stack: Stack, clips: Path) -> None:
    proc = subprocess.run(
        [
            *[sys.executable, "-m", "devtools.client", "--url", tls_stack.url, "--speed", "0"],
            *["--ca", str(tls_stack.ca_file), "--return", "vad", str(clips / "en" / "hello_world.wav")],
        ],
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=seconds(60),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"type": "end"' in proc.stdout
