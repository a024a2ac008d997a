"""Deferred jobs finish on another pool of their language when their own pool is gone (issue 11
item 3). The measured fault: with the `en` member dead, English jobs burned their five attempts in
6.5 minutes while the `multi` pool was healthy. Here `en` is killed, three English sessions go
record-only, and every job completes on `multi` (Whisper base) in one attempt."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.client import load_wav, stream_pcm
from devtools.stack import Stack
from tests.chaos.test_asr_degradation import assert_record_only
from tests.poll import wait_for
from tests.records import get_transcript
from tests.wer import wer

pytestmark = pytest.mark.chaos
CLIPS = ("hello_world", "quick_brown_fox", "counting")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    env = {
        "LOG_LEVEL": "WARNING",
        "JOBS_MAX_ATTEMPTS": "1",  # any attempt lost to the dead pool would fail its job
        "JOBS_CAPACITY_POLL_SEC": "0.2",
        "JOBS_WAIT_CAP_SEC": "1",
        "ASR_ADMISSION_WAIT_SEC": "0",
        "STAGE_TIMEOUT_SEC": "10",
    }
    with Stack(("asr.en", "asr.multi", "compress"), env=env, workdir=tmp_path) as running:
        yield running


def test_jobs_of_a_dead_pool_complete_on_the_default_pool(stack: Stack, clips: Path) -> None:
    stack.running["asr.en"].kill()  # the English pool's only member

    async def sessions() -> list[object]:
        return list(
            await asyncio.gather(
                *(
                    stream_pcm(
                        stack.url,
                        load_wav(clips / "en" / f"{name}.wav"),
                        speed=0,
                        start={
                            "flowId": f"pool-{name}",
                            "return": ["asr", "record_url"],
                            "hints": {"user_lang_pref": "en"},
                        },
                    )
                    for name in CLIPS
                )
            )
        )

    for name, result in zip(CLIPS, asyncio.run(sessions()), strict=True):
        assert_record_only(result.events, f"pool-{name}")  # type: ignore[attr-defined]
    wait_for(
        lambda: all(get_transcript(stack.http_base, f"pool-{n}")[1]["status"] in ("done", "failed") for n in CLIPS),
        180,
        "every deferred job ended",
    )
    for name in CLIPS:
        body = get_transcript(stack.http_base, f"pool-{name}")[1]
        assert body["status"] == "done" and body["attempts"] == 1, body
        text = " ".join(f["text"] for f in body["finals"])
        assert {f["lang"] for f in body["finals"]} == {"en"}
        if name != "counting":  # whisper writes digits where the reference spells them
            assert wer([(clips / "en" / f"{name}.txt").read_text()], [text]) <= 0.3, text
