"""The real stack (every service its own process, on free ports) for end-to-end tests."""

from __future__ import annotations

import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devtools.launcher import launch
from devtools.stack import Stack
from tests.poll import seconds


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    store = tmp_path_factory.mktemp("records")
    env = {
        "STORAGE_BACKEND": "local",
        "LOG_LEVEL": "WARNING",
        "FLUSH_IDLE_SEC": "1.0",
        "START_TIMEOUT_SEC": "2.0",
        "MAX_FRAME_BYTES": "65536",
    }
    with Stack(("vad", "compress"), env=env, workdir=store) as running:
        yield running


@pytest.fixture(scope="session")
def counting_pcm(clips: Path) -> bytes:
    from speechgw_client import load_audio

    return load_audio(clips / "en" / "counting.wav")


@contextmanager
def extra_gateway(stack: Stack, **env: str) -> Iterator[str]:
    """A second gateway process on the same services with other settings; yields its WS URL."""
    full = {
        **stack.gateway_env(),
        "GATEWAY_PORT": "0",
        "LOG_LEVEL": "INFO",
        "JOBS_DB": str(Path(tempfile.mkdtemp(prefix="speechgw-jobs-")) / "jobs.sqlite"),
    }
    full.update(env)
    gw = launch("gateway-extra", [sys.executable, "-m", "orchestrator"], env=full)
    try:
        yield f"ws://127.0.0.1:{gw.http_port}/ws/stream"
    finally:
        gw.stop()


def records_of(stack: Stack) -> Path:
    """The local archive directory of a stack started with a workdir."""
    assert stack.workdir is not None
    return stack.workdir / "records"


def resumes(stack: Stack) -> float:
    """The gateway's `orchestrator_resumes_total{outcome="resumed"}` (docs/protocol.md#resume)."""
    with urllib.request.urlopen(stack.http_base + "/metrics", timeout=seconds(5)) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith('orchestrator_resumes_total{outcome="resumed"}'):
                return float(line.split()[-1])
    return 0.0
