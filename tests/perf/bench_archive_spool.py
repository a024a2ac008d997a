"""`python -m tests.perf.bench_archive_spool`: what the gateway's archive spool costs per session: every
block of audio the session accepts (20 ms here) is also appended to the spool file
(orchestrator/recordings/), through the spool's executor. Prints the process CPU time (event loop and
threads) per audio second for N concurrent sessions, and what that is per real-time session.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from orchestrator.recordings.policy import SpoolBudget
from orchestrator.recordings.spool import ArchiveSpool, RecordingFiles

SECOND = 32000
BLOCK = 640  # 20 ms, a client frame


async def run(sessions: int, seconds: int, root: Path) -> float:
    """Process CPU seconds for `sessions` x `seconds` of appends."""
    with ThreadPoolExecutor(2) as pool:
        spool = ArchiveSpool(RecordingFiles(root), SpoolBudget(1 << 40), pool)
        await spool.prepare()
        writers = [w for w in (spool.writer(f"bench-{i}", "") for i in range(sessions)) if w is not None]
        block = os.urandom(BLOCK)
        cpu0 = time.process_time()
        for _ in range(seconds * SECOND // BLOCK):  # one block per session every 20 ms, in real time
            tick = time.monotonic()
            for w in writers:
                w.take(block)
            await asyncio.sleep(max(0.0, tick + 0.02 - time.monotonic()))
        for w in writers:
            await w.flush()
        cpu = time.process_time() - cpu0
        for w in writers:
            await w.discard()
        return cpu


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--seconds", type=int, default=30)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-spool-", dir="var" if Path("var").is_dir() else None) as tmp:
        cpu = asyncio.run(run(args.sessions, args.seconds, Path(tmp)))
    audio_s = args.sessions * args.seconds
    print(f"load average: {os.getloadavg()[0]:.2f}")
    print(f"{args.sessions} sessions x {args.seconds} s: {cpu:.3f} CPU s for {audio_s} audio s")
    per_s = cpu / audio_s
    print(f"per audio second: {per_s * 1e6:.0f} us CPU; per real-time session: {per_s * 100:.3f} % of a core")


if __name__ == "__main__":
    main()
