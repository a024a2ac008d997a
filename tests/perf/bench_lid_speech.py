"""LID on speech only (SPEC §4, docs/services/lid.md): what it answers for non-speech, for speech after
silent or noisy lead-ins, and how accurate an earlier answer would be.

Audio: the 27 pytest-audioeval clips (9 languages) and sentences spoken by espeak-ng (made here with
espeak-ng and sox, 16 kHz mono), lead-ins and non-speech made with sox.

Part 1, offline (the service's own VAD gate and engine, no sockets): for every clip, detections on its
first 0.5, 1, 1.5, 2, 2.5 and 3 s of speech; then each (min speech, confidence) policy: accuracy and
median speech used, and the top score of the 3 s detections that were right and wrong, and of any
non-speech that got through the VAD (to choose LID_MIN_SCORE).
Part 2, the real `python -m services.lid` with its defaults: each case streamed at real-time pace in
100 ms messages; lang, score, speech used and time from the first speech sample (as spoken, i.e. the
lead-in end) to the answer.

    python -m tests.perf.bench_lid_speech [--no-offline] [--no-service] [--service-clips espeak] [--per-clip]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import soundfile as sf

from common.models import whisper_base_dir
from devtools.launcher import launch
from proto import lid_pb2_grpc
from services.lid.config import LidConfig
from services.lid.engine import WhisperLid
from services.lid.speech import WINDOW_SAMPLES, SileroSpeech, SpeechGate, silero_session
from tests.perf.bench_lid import frames, load_clips

SENTENCES = {  # espeak-ng voice -> (Whisper code, sentence)
    "en-us": ("en", "The weather will be cold and windy tomorrow, so take a warm coat with you."),
    "de": ("de", "Morgen wird das Wetter kalt und windig, also nimm einen warmen Mantel mit."),
    "fr-fr": ("fr", "Demain il fera froid et venteux, alors prends un manteau chaud avec toi."),
    "es": ("es", "Mañana hará frío y viento, así que lleva un abrigo caliente contigo."),
    "cmn": ("zh", "明天天气会很冷而且有风，所以带上一件暖和的外套。"),
    "it": ("it", "Domani farà freddo e ci sarà vento, quindi porta con te un cappotto caldo."),
    "ru": ("ru", "Завтра будет холодно и ветрено, так что возьми с собой тёплое пальто."),
    "pt-br": ("pt", "Amanhã vai fazer frio e vento, então leve um casaco quente com você."),
}
NON_SPEECH = {  # name -> sox synth arguments (4 s)
    "silence": ["trim", "0", "4"],
    "white noise 0.1": ["synth", "4", "whitenoise", "vol", "0.1"],
    "white noise 0.5": ["synth", "4", "whitenoise", "vol", "0.5"],
    "pink noise 0.3": ["synth", "4", "pinknoise", "vol", "0.3"],
    "brown noise 0.5": ["synth", "4", "brownnoise", "vol", "0.5"],
    "tone 440 Hz": ["synth", "4", "sine", "440", "vol", "0.3"],
    "hum 50 Hz": ["synth", "4", "sine", "50", "vol", "0.5"],
    "chord 3 tones": ["synth", "4", "sine", "262", "sine", "330", "sine", "392", "remix", "-", "vol", "0.3"],
}


def sox_pcm(args: list[str], out: Path) -> bytes:
    subprocess.run(["sox", *args, "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True, capture_output=True)
    audio, sr = sf.read(out, dtype="int16")
    assert sr == 16000 and audio.ndim == 1, out
    return audio.astype("<i2").tobytes()


def espeak_clips(tmp: Path) -> list[tuple[str, str, bytes]]:
    out = []
    for voice, (lang, text) in SENTENCES.items():
        raw = tmp / f"{voice}.raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
        out.append((lang, f"espeak-{voice}", sox_pcm([str(raw)], tmp / f"{voice}.wav")))
    return out


def synth(tmp: Path, args: list[str]) -> bytes:
    out = tmp / "synth.wav"
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(out), *args], check=True, capture_output=True
    )
    audio, _ = sf.read(out, dtype="int16")
    return audio.astype("<i2").tobytes()


def first_sound(pcm: bytes, level: int = 300) -> int:
    """Sample index of the first sample louder than `level` (TTS files start with a little silence)."""
    loud = np.flatnonzero(np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32)) > level)
    return int(loud[0]) if loud.size else 0


def gate_speech(pcm: bytes, cfg: LidConfig, session: object) -> tuple[bytes, float]:
    """The speech the service would keep (up to 10 s) and the VAD's ms per second of audio."""
    gate = SpeechGate(cfg.vad_threshold, cfg.min_speech_windows, cfg.pad_windows, 10 * 16000)
    vad = SileroSpeech(session)
    step = 2 * WINDOW_SAMPLES
    whole = len(pcm) - len(pcm) % step
    t0 = time.perf_counter()
    probs = vad(pcm[:whole])
    ms = (time.perf_counter() - t0) * 1000
    for i, p in zip(range(0, whole, step), probs, strict=True):
        gate.push(pcm[i : i + step], p)
    return bytes(gate.speech), ms / max(whole / 32000, 1e-9)


SPEECH_S = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


def offline(speech: list[tuple[str, str, bytes]], noise: list[tuple[str, bytes]]) -> None:
    cfg = LidConfig()
    session = silero_session()
    engine = WhisperLid(whisper_base_dir(), cpu_threads=1, window_s=cfg.window_s)
    engine.probabilities(speech[0][2])  # warm-up
    vad_cost: list[float] = []
    table = []  # (lang, name, {seconds: (lang, score)})
    for lang, name, pcm in speech:
        kept, ms_per_s = gate_speech(pcm, cfg, session)
        vad_cost.append(ms_per_s)
        dets = {}
        for s in SPEECH_S:
            cut = kept[: int(s * 16000) * 2]
            top = engine.probabilities(cut)[0]
            dets[s] = top
            if len(cut) < int(s * 16000) * 2:
                break  # the clip has no more speech: later steps would repeat this one
        table.append((lang, name, dets))
    print(json.dumps({"part": "vad", "median_ms_per_audio_s": round(statistics.median(vad_cost), 2)}), flush=True)
    for group in ("audioeval", "espeak"):
        rows = [r for r in table if r[1].startswith("espeak") == (group == "espeak")]
        for min_s in (0.5, 1.0):
            for conf in (0.8, 0.9, 0.95, 1.01):
                hits, used, early, at_min = 0, [], 0, 0
                for lang, _, dets in rows:
                    steps = [s for s in SPEECH_S if s >= min_s and s in dets]
                    pick = next((s for s in steps if dets[s][1] >= conf), steps[-1] if steps else max(dets))
                    early += dets[pick][1] >= conf and pick < 3.0
                    hits += dets[pick][0] == lang
                    at_min += pick == min_s
                    used.append(pick)
                print(
                    json.dumps(
                        {
                            "part": "policy",
                            "clips": f"{group} ({len(rows)})",
                            "min_speech_s": min_s,
                            "confidence": conf if conf <= 1 else "never (3 s)",
                            "right": f"{hits}/{len(rows)}",
                            "answered_early": early,
                            "answered_at_min": at_min,
                            "median_speech_s": statistics.median(used),
                        }
                    ),
                    flush=True,
                )
        last = [(lang, dets[max(dets)]) for lang, _, dets in rows]
        right = sorted(round(sc, 2) for lang, (got, sc) in last if got == lang)
        wrong = sorted(round(sc, 2) for lang, (got, sc) in last if got != lang)
        print(json.dumps({"part": "scores at <=3 s", "clips": group, "right": right, "wrong": wrong}), flush=True)
    for name, pcm in noise:
        kept, _ = gate_speech(pcm, cfg, session)
        top = engine.probabilities(kept)[0] if kept else ("-", 0.0)
        row = {"part": "non-speech", "case": name, "speech_ms": len(kept) // 32, "lang": top[0], "score": top[1]}
        print(json.dumps(row), flush=True)


async def stream(stub: lid_pb2_grpc.LidStub, pcm: bytes, speech_at: int | None) -> dict[str, object]:
    """Real-time pace: message k (100 ms) is sent once its audio has been spoken, at t0 + (k + 1) * 0.1."""
    msgs = frames(pcm, "bench")
    t0 = time.monotonic()

    async def paced() -> AsyncIterator[object]:
        for i, msg in enumerate(msgs):
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.1 - time.monotonic()))
            yield msg

    result = await stub.Detect(paced(), timeout=60)  # type: ignore[arg-type]
    done = time.monotonic()
    after = None if speech_at is None else round((done - t0 - speech_at / 16000) * 1000)
    return {"lang": result.lang, "score": round(result.score, 3), "speech_ms": result.audio_ms, "answer_ms": after}


async def mean_ms(http_base: str) -> dict[str, float]:
    """Mean of the service's own inference and VAD histograms over the whole run."""
    async with aiohttp.ClientSession() as http, http.get(f"{http_base}/metrics") as resp:
        lines = (await resp.text()).splitlines()
    value = {ln.split()[0]: float(ln.split()[1]) for ln in lines if ln and not ln.startswith("#")}
    out = {}
    for name in ("lid_inference_ms", "lid_vad_ms"):
        count = value.get(f"{name}_count", 0.0)
        out[f"{name}_calls"] = count
        out[f"{name}_mean"] = round(value.get(f"{name}_sum", 0.0) / count, 2) if count else 0.0
    return out


async def service(
    speech: list[tuple[str, str, bytes]], tmp: Path, noise: list[tuple[str, bytes]], per_clip: bool
) -> None:
    svc = launch("lid", env={"LID_CPU_THREADS": "1", "LOG_LEVEL": "WARNING"})
    leads = {
        "no lead-in": b"",
        "1 s silence": synth(tmp, ["trim", "0", "1"]),
        "2 s silence": synth(tmp, ["trim", "0", "2"]),
        "3 s silence": synth(tmp, ["trim", "0", "3"]),
        "1 s white noise 0.05": synth(tmp, ["synth", "1", "whitenoise", "vol", "0.05"]),
    }
    try:
        async with grpc.aio.insecure_channel(svc.grpc_addr) as channel:
            stub = lid_pb2_grpc.LidStub(channel)
            for name, pcm in noise:
                print(json.dumps({"part": "service", "case": name, **await stream(stub, pcm, None)}), flush=True)
            for lead_name, lead in leads.items():
                got = []
                for lang, name, pcm in speech:
                    row = await stream(stub, lead + pcm, len(lead) // 2 + first_sound(pcm))
                    got.append((lang, name, row))
                    if per_clip:
                        print(json.dumps({"part": "clip", "case": f"{lead_name} + {name}", **row}), flush=True)
                right = sum(r["lang"] == lang for lang, _, r in got)
                times = [r["answer_ms"] for _, _, r in got]
                row = {
                    "part": "service",
                    "case": f"{lead_name} + speech",
                    "right": f"{right}/{len(got)}",
                    "answer_ms_p50": statistics.median(times),  # type: ignore[type-var]
                    "answer_ms_max": max(times),  # type: ignore[type-var]
                    "speech_ms_p50": statistics.median(r["speech_ms"] for _, _, r in got),  # type: ignore[misc]
                    "misses": [f"{name}->{r['lang']}:{r['score']}" for lang, name, r in got if r["lang"] != lang],
                }
                print(json.dumps(row), flush=True)
        print(json.dumps({"part": "service metrics", **await mean_ms(svc.http_base)}), flush=True)
    finally:
        svc.stop()  # also closes its stdout pipe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--no-offline", action="store_true")
    p.add_argument("--no-service", action="store_true")
    p.add_argument("--service-clips", choices=("espeak", "all"), default="all")
    p.add_argument("--per-clip", action="store_true", help="print every service answer")
    args = p.parse_args(argv)
    print(f"# lid speech: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        espeak = espeak_clips(tmp)
        clips = load_clips()
        noise = [(name, synth(tmp, sox_args)) for name, sox_args in NON_SPEECH.items()]
        if not args.no_offline:
            offline(clips + espeak, noise)
        if not args.no_service:
            chosen = espeak if args.service_clips == "espeak" else clips + espeak
            asyncio.run(service(chosen, tmp, noise, args.per_clip))
    print(f"# load average at the end {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
