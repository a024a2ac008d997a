"""The real stack (every service its own process, on free ports) for end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    store = tmp_path_factory.mktemp("records")
    env = {"COMPRESS_STORE_DIR": str(store), "STORAGE_BACKEND": "local", "LOG_LEVEL": "WARNING",
           "FLUSH_IDLE_SEC": "1.0", "START_TIMEOUT_SEC": "2.0", "MAX_FRAME_BYTES": "65536"}
    with Stack(("vad", "compress"), env=env) as running:
        running.store_dir = store  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="session")
def counting_pcm(clips: Path) -> bytes:
    from orchestrator.client import load_wav

    return load_wav(clips / "en" / "counting.wav")
