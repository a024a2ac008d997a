"""Batch throughput: files streamed as fast as the gateway takes them (`speechgw-client --speed 0`).

The real default stack (`make run`). Each file is a corpus long session (English with pauses in light
pink noise); 1 and then 4 files go in parallel. Backpressure, not failure, must slow the client down:
every file must come back whole, with no error event, a `record_url` as long as the audio, and its
transcript. Printed per row: audio seconds per wall second (all files together), the wall time, the
WER against the reference, and whether every file came back whole.

    python -m tests.perf.bench_batch [--minutes 1.5,10] [--parallel 1,4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from devtools.client import stream_pcm
from devtools.stack import DEFAULT_SERVICES, Stack
from speechgw_client import StreamResult
from tests.corpus import Case, build, long_spec
from tests.wer import wer


def whole(case: Case, result: StreamResult) -> bool:
    """Everything came back: no error, the archive as long as the audio, finals, a clean end."""
    kinds = [e["type"] for e in result.events]
    records = result.of_type("record_url")
    return (
        "error" not in kinds
        and bool(records)
        and abs(records[0]["duration_s"] - case.duration_s) < 0.05
        and bool(result.of_type("asr_final"))
        and kinds[-1:] == ["end"]
        and result.events[-1].get("reason") == "flush"
    )


async def run_batch(url: str, case: Case, parallel: int) -> dict[str, Any]:
    pcm = case.pcm()
    start = {"return": ["asr", "record_url", "lid"], "hints": {"user_lang_pref": "auto"}}
    t0 = time.monotonic()
    outcomes = await asyncio.gather(
        *(stream_pcm(url, pcm, speed=0.0, start=start) for _ in range(parallel)), return_exceptions=True
    )
    wall_s = time.monotonic() - t0
    results = [r for r in outcomes if isinstance(r, StreamResult)]
    hyps = [" ".join(e["text"] for e in r.of_type("asr_final")) for r in results]
    hyps += [""] * (parallel - len(results))  # a client that failed got nothing
    return {
        "file_s": round(case.duration_s, 1),
        "parallel": parallel,
        "wall_s": round(wall_s, 1),
        "audio_s_per_wall_s": round(parallel * case.duration_s / wall_s, 2),
        "whole": sum(whole(case, r) for r in results),
        "errors": sorted({f"{e['code']}: {e['message']}" for r in results for e in r.of_type("error")}),
        "client_failures": sorted({repr(r) for r in outcomes if not isinstance(r, StreamResult)}),
        "close_codes": sorted({r.close_code for r in results if r.close_code is not None}),
        "wer": round(wer([case.reference] * parallel, hyps), 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", default="1.5,10", help="file lengths, comma-separated")
    p.add_argument("--parallel", default="1,4", help="files in parallel, comma-separated")
    args = p.parse_args(argv)
    cases = [build(long_spec(float(m))) for m in args.minutes.split(",")]
    print(f"# batch throughput, default stack, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    with Stack(DEFAULT_SERVICES, env={"LOG_LEVEL": "ERROR"}, workdir=work) as stack:
        for case in cases:
            for parallel in (int(n) for n in args.parallel.split(",")):
                print(json.dumps(asyncio.run(run_batch(stack.url, case, parallel))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
