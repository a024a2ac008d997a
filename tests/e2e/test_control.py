"""Session control messages on the real stack (VAD, Whisper tiny.en, archive, gateway): `finalize`
mid-stream answers the final of the speech so far at once and the stream goes on; `keepalive` keeps a
quiet stream open past FLUSH_IDLE_SEC (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from devtools.client import stream_pcm
from devtools.devauth import default_token
from devtools.stack import Stack
from speechgw_client import Ack, End, connect
from tests import corpus
from tests.corpus import SpeechSpec, Utterance
from tests.schemas import check_event
from tests.wer import wer

pytestmark = pytest.mark.e2e
WER_MAX = 0.35
FIRST, SECOND = corpus.EN_SENTENCES[0], corpus.EN_SENTENCES[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"LOG_LEVEL": "WARNING", "ASR_ENGINE": "whisper", "ASR_MODEL": "tiny.en", "FLUSH_IDLE_SEC": "1.5"}
    with Stack(("vad", "asr", "compress"), env=env, workdir=tmp_path_factory.mktemp("control")) as running:
        yield running


def two_sentences(name: str, pause_s: float) -> corpus.Case:
    """FIRST and SECOND in one voice after 0.5 s of silence, `pause_s` apart."""
    utterances = (Utterance(FIRST, "en", "en-us"), Utterance(SECOND, "en", "en-us"))
    return corpus.build(SpeechSpec(name, utterances, lead_in_s=0.5, pauses_s=(pause_s,)))


def test_finalize_mid_stream_answers_the_speech_so_far_and_the_stream_goes_on(stack: Stack) -> None:
    case = two_sentences("finalize-two", pause_s=2.5)
    first, second = case.segments
    # Right after the first sentence, before the VAD has heard enough silence to end it itself.
    finalize_at = first.end_s + 0.06
    start = {"return": ["asr", "vad"], "hints": {"user_lang_pref": "en"}}
    result = asyncio.run(stream_pcm(stack.url, case.pcm(), speed=1.0, start=start, finalize_at_s=[finalize_at]))
    for event in result.events:
        check_event(event)
    assert result.ok, result.events
    finals = [(t, e) for t, e in zip(result.received_at, result.events, strict=True) if e["type"] == "asr_final"]
    answered = [(t, e) for t, e in finals if e.get("from_finalize")]
    assert len(answered) == 1, finals
    at, final = answered[0]
    assert final["ts"][1] == pytest.approx(finalize_at, abs=0.03)  # closed where the audio sent ended
    assert wer([FIRST], [final["text"]]) <= WER_MAX, final["text"]
    assert result.first_audio_at is not None
    assert at < result.first_audio_at + second.start_s, "the finalize's answer waited for later audio"
    # The VAD's own end of the first sentence adds nothing; the second sentence is transcribed as usual.
    others = [e for _, e in finals if not e.get("from_finalize")]
    assert [e["text"] for e in others if e["ts"][1] <= second.start_s and e["text"].strip()] == []
    rest = " ".join(e["text"] for e in others if e["ts"][0] >= finalize_at)
    assert wer([SECOND], [rest]) <= WER_MAX, rest
    assert result.of_type("end")[0]["reason"] == "flush"


def test_finalize_within_a_sentence_splits_it_without_losing_words(stack: Stack) -> None:
    case = corpus.build(SpeechSpec("finalize-one", (Utterance(FIRST, "en", "en-us"),), lead_in_s=0.5))
    (speech,) = case.segments
    finalize_at = speech.start_s + 1.0
    start = {"return": ["asr"], "hints": {"user_lang_pref": "en"}}
    result = asyncio.run(stream_pcm(stack.url, case.pcm(), speed=1.0, start=start, finalize_at_s=[finalize_at]))
    assert result.ok, result.events
    finals = result.of_type("asr_final")
    assert [e.get("from_finalize", False) for e in finals] == [True, False], finals
    assert finals[0]["ts"][1] == pytest.approx(finalize_at, abs=0.03) == finals[1]["ts"][0]
    # The words before the cut come at once; the rest of the sentence follows (a word cut in two
    # may be lost, which is what finalizing mid-word means).
    said = set(_words(FIRST))
    assert _words(finals[0]["text"]) and set(_words(finals[0]["text"])) <= said, finals[0]
    assert len(set(_words(finals[1]["text"])) & said) >= 3, finals[1]


def _words(text: str) -> list[str]:
    return [w.strip(".,!?").lower() for w in text.split()]


@pytest.mark.parametrize(("endpointing", "finals"), [(None, 2), (300, 2), (2000, 1), (False, 1)])
def test_endpointing_sets_the_silence_that_ends_an_utterance(
    stack: Stack, endpointing: int | bool | None, finals: int
) -> None:
    """Two sentences 1 s apart: the default (VAD_MIN_SILENCE_MS, 300 ms) and 300 ms end the first at
    the pause; 2000 ms hears the pause as part of one utterance; false leaves the end to the stream."""
    case = two_sentences("endpointing-two", pause_s=1.0)
    start: dict[str, object] = {"return": ["asr"], "hints": {"user_lang_pref": "en"}}
    if endpointing is not None:
        start["endpointing"] = endpointing
    result = asyncio.run(stream_pcm(stack.url, case.pcm(), speed=1.0, start=start))
    assert result.ok, result.events
    texts = [e["text"] for e in result.of_type("asr_final") if e["text"].strip()]
    assert len(texts) == finals, texts
    assert wer([f"{FIRST} {SECOND}"], [" ".join(texts)]) <= WER_MAX, texts


def test_keepalive_holds_a_quiet_stream_past_the_idle_timeout(stack: Stack) -> None:
    async def session(keepalive: bool) -> tuple[float, str]:
        async with connect(stack.url, token=default_token(), families=["asr"]) as s:
            events = aiter(s.events())
            assert isinstance(await anext(events), Ack)
            await s.send(b"\x00\x00" * 3200)  # 0.2 s of silence, then none
            t0 = time.monotonic()
            if keepalive:
                for _ in range(4):  # 2.4 s, past FLUSH_IDLE_SEC (1.5 s): the stream stays open
                    await asyncio.sleep(0.6)
                    await s.keepalive()
                await s.flush()
            async for event in events:
                check_event(event.raw)
                if isinstance(event, End):
                    return time.monotonic() - t0, event.reason
            raise AssertionError("closed without end")

    held, reason = asyncio.run(session(keepalive=True))
    assert reason == "flush" and held >= 2.4
    idle_after, reason = asyncio.run(session(keepalive=False))
    assert reason == "idle" and idle_after < 2.4
