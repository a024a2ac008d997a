"""The browser page (orchestrator/web, docs/web.md) on a gateway in this process (127.0.0.1:0, a fake archive
stage, authentication off): the files and their headers, the same-origin rule in a real browser, what the
page sends (16 kHz PCM16 in 100 ms frames, the pitch of a tone kept), and the resampler measured."""

from __future__ import annotations

import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.async_api import WebSocket

from orchestrator import metrics
from orchestrator.config import GatewayConfig, ListenConfig
from orchestrator.core.events import StageName
from orchestrator.gateway import Gateway
from orchestrator.web import CONTENT_SECURITY_POLICY, PAGE_FILES, WEB_DIR
from tests.browser import async_chromium
from tests.fakes import FakeStage
from tests.integration.test_gateway_auth import http
from tests.poll import seconds, until

pytestmark = pytest.mark.integration
SR = 16000
TONE_HZ = 1000.0


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, FakeStage]]:
    archive = FakeStage(StageName.COMPRESS)
    gw = Gateway(GatewayConfig(listen=ListenConfig(port=0, tick_s=0.05)), stages=[archive])
    await gw.start()
    try:
        yield gw, archive
    finally:
        await gw.stop()


def base(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.port}"


def ms(n: float) -> float:
    return seconds(n) * 1000


async def test_the_page_and_its_files_are_served_with_their_headers(gateway: tuple[Gateway, FakeStage]) -> None:
    gw, _ = gateway
    for path, name in PAGE_FILES.items():
        status, headers, body = await http(gw, path)
        assert status == 200 and body == (WEB_DIR / name).read_bytes(), path
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
        assert "microphone=(self)" in headers["permissions-policy"]
    assert (await http(gw, "/"))[1]["content-type"] == "text/html; charset=utf-8"
    assert (await http(gw, "/web/capture-worklet.js"))[1]["content-type"] == "text/javascript; charset=utf-8"
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(
    "path",
    [
        "/index.html",
        "/web/",
        "/web/missing.js",
        "/web/../gateway.py",
        "/web/%2e%2e/gateway.py",
        "/web/..%2f__init__.py",
        "/web/__init__.py",
        "/web//app.js",
        "//web/app.js",
    ],
)
async def test_nothing_else_is_served(gateway: tuple[Gateway, FakeStage], path: str) -> None:
    status, headers, body = await http(gateway[0], path)
    assert status == 404 and b"import" not in body and "content-security-policy" not in headers


@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD"])
async def test_the_page_is_get_only(gateway: tuple[Gateway, FakeStage], method: str) -> None:
    status, headers, _ = await http(gateway[0], "/", method)
    assert status == 405 and headers["allow"] == "GET"


def tone_wav(path: Path) -> Path:
    """4 s of the tone, then 1 s of silence (the fake microphone repeats its file's last block at the end)."""
    t = np.arange(4 * SR) / SR
    tone = np.concatenate([0.3 * np.sin(2 * np.pi * TONE_HZ * t), np.zeros(SR)])
    pcm = (tone * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())
    return path


def tone_frequency_and_snr(pcm: bytes) -> tuple[float, float]:
    """The strongest frequency of 1 s from the middle of the tone (Hann window, zero-padded to 0.1 Hz bins),
    and the tone's SNR in dB: the least-squares sine at that frequency against what is left, the best of
    three 1 s windows across the tone. A loaded machine can make the browser miss an audio callback (a
    glitch in one window); the page's resampling or an automatic gain would spoil all three."""
    x = np.frombuffer(pcm, "<i2").astype(np.float64) / 32768
    loud = np.flatnonzero(np.abs(x) > 0.1)
    first, last = loud[0] + SR // 4, loud[-1] - SR // 4  # away from the tone's edges
    windows = [x[start : start + SR] for start in np.linspace(first, last - SR, 3).astype(int)]
    seg = windows[1]
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), 10 * len(seg)))
    freq = float(np.argmax(spectrum)) * SR / (10 * len(seg))
    t = np.arange(SR) / SR
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t), np.ones_like(t)], axis=1)
    snrs = []
    for w in windows:
        fit = basis @ np.linalg.lstsq(basis, w, rcond=None)[0]
        snrs.append(float(10 * np.log10(np.sum(fit**2) / np.sum((w - fit) ** 2))))
    return freq, max(snrs)


async def test_the_page_sends_16_khz_pcm16_in_100_ms_frames(gateway: tuple[Gateway, FakeStage], tmp_path: Path) -> None:
    """A 1 kHz tone played by the fake microphone (chromium resamples it to its device rate) reaches the
    gateway at 1 kHz: the page resampled the context's rate to 16 kHz, and every frame holds 100 ms."""
    gw, archive = gateway
    sent: list[str | bytes] = []

    def watch(ws: WebSocket) -> None:
        ws.on("framesent", lambda payload: sent.append(payload))

    async with async_chromium(fake_audio=tone_wav(tmp_path / "tone.wav")) as browser:
        page = await browser.new_page()
        page.on("websocket", watch)
        await page.goto(f"{base(gw)}/")
        await page.click("#start")
        await page.wait_for_function(
            "() => document.getElementById('status').textContent.startsWith('Listening')", timeout=ms(10)
        )
        # 2 s of tone, then silence (the file plays once): stop once 3 s of audio went out.
        await until(lambda: sum(len(f) for f in sent if isinstance(f, bytes)) >= 3 * 2 * SR, 15, "3 s of audio")
        await page.click("#stop")
        await page.wait_for_function(
            "() => document.getElementById('status').textContent === 'Ended (flush).'", timeout=ms(10)
        )
        assert await page.is_hidden("#error")
        # The browser reports sent frames on its own channel: the last may trail the page's own "Ended".
        await until(lambda: sent[-1] == '{"type":"flush"}', 5, "the flush frame reported")
    start: dict[str, Any] = json.loads(str(sent[0]))
    assert start["audio"] == {"codec": "pcm_s16le", "sr": 16000, "channels": 1, "chunk_ms": 100}
    assert start["hints"] == {"user_lang_pref": "auto"} and "auth" not in start
    assert sent[-1] == '{"type":"flush"}'
    audio = [f for f in sent[1:-1] if isinstance(f, bytes)]
    assert len(audio) == len(sent) - 2 and len(audio) >= 30
    assert {len(f) for f in audio[:-1]} == {3200} and 0 < len(audio[-1]) <= 3200
    pcm = b"".join(audio)
    assert archive.audio_bytes == len(pcm)  # every byte the page sent was taken
    freq, snr_db = tone_frequency_and_snr(pcm)
    assert abs(freq - TONE_HZ) < 2.0, freq  # a wrong rate would move the pitch: 48 kHz as 16 kHz is 333 Hz
    print(f"tone through the page: {freq:.2f} Hz, SNR {snr_db:.1f} dB")
    assert snr_db > 50.0, snr_db  # measured 73 dB; the browser's automatic gain alone brings it to 14 dB


async def test_a_page_of_another_origin_cannot_open_a_stream(gateway: tuple[Gateway, FakeStage]) -> None:
    """The page's own origin passes without ALLOWED_ORIGINS (empty here); another site's page is refused."""
    gw, _ = gateway
    before = metrics.REGISTRY.get_sample_value("orchestrator_refusals_total", {"reason": "origin_not_allowed"})
    opened = """url => new Promise(done => {
      const ws = new WebSocket(url, ["speechgw.v1"]);
      ws.onopen = () => { ws.close(); done("open"); };
      ws.onerror = () => done("refused");
    })"""
    async with async_chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{base(gw)}/")
        assert await page.evaluate(opened, f"ws://127.0.0.1:{gw.port}/ws/stream") == "open"
        # Another origin, on loopback too (a public one would first meet chromium's local-network checks): a
        # document of http://localhost:PORT without the page's CSP (the gateway's 404) opens a socket to 127.0.0.1.
        other = await browser.new_page()
        await other.goto(f"http://localhost:{gw.port}/elsewhere")
        assert await other.evaluate(opened, f"ws://127.0.0.1:{gw.port}/ws/stream") == "refused"
    after = metrics.REGISTRY.get_sample_value("orchestrator_refusals_total", {"reason": "origin_not_allowed"})
    assert (after or 0) - (before or 0) == 1


MEASURE_RESAMPLER = """async () => {
  const { Resampler, toPcm16 } = await import("/web/resampler.js");
  const OUT = 16000;
  const tone = (rate, freq, s) =>
    Float32Array.from({ length: Math.round(rate * s) }, (_, i) => 0.5 * Math.sin((2 * Math.PI * freq * i) / rate));
  const run = (rate, x, block) => {
    const r = new Resampler(rate, OUT);
    const parts = [];
    for (let i = 0; i < x.length; i += block) parts.push(r.push(x.subarray(i, i + block)));
    parts.push(r.flush());
    return parts.flatMap((p) => Array.from(p));
  };
  // Skip 0.1 s at each end (the filter's edges).
  const errorDb = (y, freq) => {
    let err = 0, sig = 0;
    for (let i = 1600; i < y.length - 1600; i++) {
      const ideal = 0.5 * Math.sin((2 * Math.PI * freq * i) / OUT);
      err += (y[i] - ideal) ** 2;
      sig += ideal ** 2;
    }
    return 10 * Math.log10(err / sig);
  };
  const levelDb = (y) => {
    const m = y.slice(1600, y.length - 1600);
    return 10 * Math.log10(m.reduce((s, v) => s + v * v, 0) / m.length / 0.125);
  };
  const out = { error: {}, level: {}, length: {} };
  for (const rate of [48000, 44100, 22050, 8000]) {
    out.error[rate] = errorDb(run(rate, tone(rate, 1000, 1), 128), 1000);
    out.length[rate] = run(rate, tone(rate, 1000, 1), 128).length;
  }
  for (const rate of [48000, 44100]) {
    for (const f of [300, 3400, 6000, 8500, 9000, 12000, 20000]) {
      out.level[`${rate}:${f}`] = levelDb(run(rate, tone(rate, f, 1), 128));
    }
  }
  const x = tone(44100, 440, 1);
  const a = run(44100, x, 128), b = run(44100, x, 1000), c = run(44100, x, x.length);
  const diffs = a.map((v, i) => Math.max(Math.abs(v - b[i]), Math.abs(v - c[i])));
  out.chunking = Math.max(...diffs, Math.abs(a.length - b.length), Math.abs(a.length - c.length));
  out.pcm = Array.from(toPcm16([0, 0.5, 1, -1, 1.5, -1.5]));
  return out;
}"""


async def test_the_resampler_keeps_speech_and_refuses_aliases(gateway: tuple[Gateway, FakeStage]) -> None:
    """The worklet's resampler (resampler.js) in chromium: a 1 kHz tone from 48, 44.1, 22.05 and 8 kHz is the
    ideal 16 kHz tone within -90 dB; the speech band is flat; tones above 8 kHz, which would fold back into it,
    are 80 dB down; the output does not depend on how the input is cut into blocks."""
    async with async_chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{base(gateway[0])}/")
        got = await page.evaluate(MEASURE_RESAMPLER)
    for rate, err_db in got["error"].items():
        assert err_db < -90, (rate, err_db)
        assert abs(got["length"][rate] - SR) <= 2, (rate, got["length"][rate])
    for key, level_db in got["level"].items():
        freq = int(key.split(":")[1])
        if freq <= 6000:
            assert abs(level_db) < 0.01, (key, level_db)  # the speech band passes untouched
        else:
            assert level_db < -80, (key, level_db)  # would alias into 0-8 kHz
    assert got["chunking"] < 1e-6
    assert got["pcm"] == [0, 16384, 32767, -32767, 32767, -32767]
