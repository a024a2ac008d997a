"""WER with packet loss and reordering on the Opus link (SPEC §6: "1 % loss/reorder on the Opus link").

`python -m tests.perf.bench_opus_loss [--seeds 3] [--rates 0.01] [--engine whisper:tiny.en]`

Streams the English sessions of the live corpus (tests/corpus.py: six voices, lead-ins of silence or
noise, two sentences with a pause) to a real ASR service process over gRPC, as the gateway's Opus link
does (Opus 20 kbps VBR, 20 ms packets with their `seq`), with the packet sequence impaired on the way:

- `loss`: each packet is dropped with probability p (the service conceals the gap);
- `reorder`: each packet is held back behind the next one with probability p (it arrives one or two
  packets late, inside the service's reorder window of 3);
- `loss+reorder`: both.

The finals of each session are scored against its reference (tests/wer.py); each condition runs with
`--seeds` different random draws and the median WER over seeds is printed beside the clean figure.
Sessions are sent as fast as the service takes them: the impairment is in the packet sequence, not
in time, so pacing does not change what is decoded.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Sequence

import numpy as np
import opuslib

from tests.corpus import Case, build, main_specs
from tests.wer import wer

FRAME = 320  # 20 ms at 16 kHz
BITRATE = 20000


def packets(pcm: bytes) -> list[tuple[int, bytes]]:
    """The Opus link's packets of a session: (seq, 20 ms Opus frame)."""
    enc = opuslib.Encoder(16000, 1, opuslib.APPLICATION_VOIP)
    enc.bitrate, enc.vbr, enc.complexity = BITRATE, 1, 5
    samples = np.frombuffer(pcm, dtype="<i2")
    usable = len(samples) // FRAME * FRAME
    return [(i, enc.encode(samples[o : o + FRAME].tobytes(), FRAME)) for i, o in enumerate(range(0, usable, FRAME))]


def impair(
    seq: Sequence[tuple[int, bytes]], loss: float, reorder: float, rng: random.Random
) -> list[tuple[int, bytes]]:
    """Drop each packet with probability `loss`; hold each kept one back behind the next with
    probability `reorder`."""
    kept = [p for p in seq if rng.random() >= loss]
    out: list[tuple[int, bytes]] = []
    held: tuple[int, bytes] | None = None
    for p in kept:
        out.append(p)
        if held is not None:
            out.append(held)
            held = None
        if rng.random() < reorder and held is None:
            held = out.pop()
    if held is not None:
        out.append(held)
    return out


async def transcribe(addr: str, stream: Sequence[tuple[int, bytes]], lang: str) -> str:
    import grpc

    from proto import asr_pb2, asr_pb2_grpc

    async def requests() -> AsyncIterator[asr_pb2.ClientFrame]:
        yield asr_pb2.ClientFrame(
            start=asr_pb2.Start(
                flow_id="loss",
                codec="opus",
                sr=16000,
                channels=1,
                frame_ms=20,
                bitrate=BITRATE,
                vbr=True,
                lang_hint=lang,
            )
        )
        for i in range(0, len(stream), 5):  # five packets per message, as a small OpusBatch
            batch = [asr_pb2.OpusPacket(data=data, seq=seq) for seq, data in stream[i : i + 5]]
            yield asr_pb2.ClientFrame(batch=asr_pb2.OpusBatch(packets=batch))

    finals: list[str] = []
    async with grpc.aio.insecure_channel(addr) as channel:
        async for event in asr_pb2_grpc.RecognizeStub(channel).Stream(requests(), timeout=120):
            if event.type == "final" and event.text.strip():
                finals.append(event.text)
    return " ".join(finals)


async def run(
    engine: str, model: str, cases: list[Case], conditions: list[tuple[str, float, float]], seeds: int
) -> None:
    from devtools.launcher import launch

    env = {"ASR_ENGINE": engine, "ASR_MODEL": model, "LOG_LEVEL": "WARNING"}
    service = await asyncio.to_thread(launch, "asr", env=env, timeout_s=180)
    try:
        refs = [c.reference for c in cases]
        encoded = [packets(c.pcm()) for c in cases]
        print(f"{engine} {model}: {len(cases)} English sessions, {sum(c.duration_s for c in cases):.0f} s of audio")
        print("| condition | p | WER per seed | median WER | packets dropped | packets late |")
        print("|---|---|---|---|---|---|")
        for label, loss, reorder in conditions:
            figures, dropped, late = [], 0, 0
            for seed in range(1 if label == "clean" else seeds):
                rng = random.Random(seed)
                hyps = []
                for case, pkts in zip(cases, encoded, strict=True):
                    stream = impair(pkts, loss, reorder, rng)
                    dropped += len(pkts) - len(stream)
                    late += sum(1 for a, b in itertools.pairwise(stream) if b[0] < a[0])
                    hyps.append(await transcribe(service.grpc_addr, stream, case.lang))
                figures.append(wer(refs, hyps))
            p = max(loss, reorder)
            print(
                f"| {label} | {p:g} | {' / '.join(f'{f:.3f}' for f in figures)} | {statistics.median(figures):.3f} "
                f"| {dropped} | {late} |"
            )
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rates", default="0.01", help="comma list of p, e.g. 0.01,0.05")
    parser.add_argument("--engine", default="whisper:tiny.en")
    args = parser.parse_args()
    engine, _, model = args.engine.partition(":")
    cases = [build(spec) for spec in main_specs() if spec.utterances[0].lang == "en"]
    conditions = [("clean", 0.0, 0.0)]
    for p in (float(r) for r in args.rates.split(",")):
        conditions += [("loss", p, 0.0), ("reorder", 0.0, p), ("loss+reorder", p, p)]
    t0 = time.monotonic()
    asyncio.run(run(engine, model, cases, conditions, args.seeds))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\n{time.monotonic() - t0:.0f} s; {load}")


if __name__ == "__main__":
    main()
