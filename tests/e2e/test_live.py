"""Live sessions as users meet them (issue 9), on the default stack of `make run` (VAD, LID, ASR pools
`en` and `multi`, archive, gateway): speech after a lead-in of silence gets no text before it starts,
and silence or noise alone gets no text and no confident language. Audio from tests/corpus.py, streamed
in real time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.client import stream_pcm
from devtools.stack import DEFAULT_SERVICES, Stack
from speechgw_client import StreamResult
from tests import corpus
from tests.corpus import Case, NoiseSpec
from tests.schemas import check_event
from tests.wer import wer

pytestmark = pytest.mark.e2e
EARLY_MARGIN_S = 0.2  # a partial's ts may start a little before the speech (VAD pre-roll), not end there
LEAD_IN_WER_MAX = 0.2


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(DEFAULT_SERVICES, env={"LOG_LEVEL": "WARNING"}, workdir=tmp_path_factory.mktemp("live")) as stack:
        yield stack


def stream_live(stack: Stack, case: Case, lang: str) -> StreamResult:
    start = {"return": ["lid", "asr", "record_url"], "hints": {"user_lang_pref": lang}}
    result = asyncio.run(stream_pcm(stack.url, case.pcm(), speed=1.0, start=start))
    for event in result.events:
        check_event(event)
    assert result.events and result.events[-1]["type"] == "end", result.events
    return result


def text_events(result: StreamResult) -> list[tuple[float, dict[str, Any]]]:
    """(arrival time, event) of every partial or final that carries text."""
    return [
        (t, e)
        for t, e in zip(result.received_at, result.events, strict=True)
        if e["type"] in ("asr_partial", "asr_final") and e["text"].strip()
    ]


@pytest.mark.parametrize("lang", ["auto", "en"])
def test_no_text_before_speech_after_a_silent_lead_in(live_stack: Stack, lang: str) -> None:
    case = corpus.lead_in_case(1.5)
    result = stream_live(live_stack, case, lang)
    assert not result.of_type("error"), result.of_type("error")
    assert result.first_audio_at is not None
    speech_at = result.first_audio_at + case.speech_start_s
    early = [e for t, e in text_events(result) if t < speech_at or e["ts"][1] < case.speech_start_s - EARLY_MARGIN_S]
    assert not early, f"text before the speech began at {case.speech_start_s} s: {early}"
    finals = " ".join(e["text"] for e in result.of_type("asr_final"))
    assert wer([case.reference], [finals]) <= LEAD_IN_WER_MAX, finals


@pytest.mark.parametrize("lang", ["auto", "en"])
@pytest.mark.parametrize(
    "spec",
    [NoiseSpec("silence4s", "silence", 4.0, -120.0), NoiseSpec("white4s-30", "white", 4.0, -30.0, seed=7)],
    ids=["digital-silence", "white-noise"],
)
def test_non_speech_gives_no_text_and_no_confident_language(live_stack: Stack, spec: NoiseSpec, lang: str) -> None:
    result = stream_live(live_stack, corpus.build(spec), lang)
    assert not result.of_type("error"), result.of_type("error")
    assert not text_events(result), [e for _, e in text_events(result)]
    guesses = [e for e in result.of_type("lid") if e["source"] == "lid" and e["lang"] != "und"]
    assert not guesses, guesses
