"""speechgw-batch's retries over a real socket: a gateway that cannot be reached is retried with
backoff, then reported; the other files are not held up and nothing is marked done."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from devtools.batch.jobs import discover, plan
from devtools.batch.run import BatchConfig, amain

pytestmark = pytest.mark.integration


def test_an_unreachable_gateway_is_retried_then_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a.wav", "b.flac"):
        sf.write(tmp_path / name, np.zeros(1600, dtype=np.float32), 16000)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = BatchConfig(url=f"ws://127.0.0.1:{port}/ws/stream", retries=2, backoff_base_s=0.01, token=lambda: None)
    sources, _ = discover([str(tmp_path)])
    status = asyncio.run(amain(plan(sources, None), cfg, progress_bar=False))
    out = capsys.readouterr()
    assert status == 1
    assert "finished: 0 transcribed, 0 already done, 2 failed, 0 left of 2 files" in out.out
    assert "4 retries" in out.out and out.out.count("cannot connect") == 2
    assert out.err.count("retry 2/2 of ") == 2 and not list(tmp_path.glob("*.done"))
