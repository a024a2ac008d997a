"""Network faults between the gateway and one stage, injected by a TCP fault proxy
(tests/faultproxy.py) in the real stack: a hung LID, a slow VAD, an ASR member gone mid-utterance.
Each test checks what the client receives and that the archive holds every second the gateway
accepted (the stored object decoded against `end.audio_s`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from devtools.client import stream_pcm
from speechgw_client import load_audio
from tests.archive_check import assert_archived_whole
from tests.chaos.netfaults import proxied_stack
from tests.poll import seconds
from tests.wer import wer

pytestmark = pytest.mark.chaos
BASE_ENV = {"LOG_LEVEL": "WARNING", "STORAGE_BACKEND": "local"}


def test_lid_hung_session_still_transcribed_on_the_default_route(tmp_path: Path, clips: Path) -> None:
    """LID black-holed after the gateway connected (a hung host: the TCP connection stays, nothing
    answers): `lid_unavailable` after STAGE_TIMEOUT_SEC past the end of audio, the language falls to
    the default route, and the ASR's finals (held for the language) still reach the client."""
    env = {**BASE_ENV, "ASR_ENGINE": "whisper", "ASR_MODEL": "tiny.en", "STAGE_TIMEOUT_SEC": "4"}
    with proxied_stack(tmp_path, ("vad", "asr", "compress"), ("lid",), env) as ps:
        ps.proxies["lid"].set(blackhole=True)
        pcm = load_audio(clips / "en" / "quick_brown_fox.wav")
        start = {"flowId": "lid-hung", "return": ["lid", "asr", "record_url"]}
        result = asyncio.run(stream_pcm(ps.stack.url, pcm, speed=0, start=start))
        assert_archived_whole(result.events)
    errors = result.of_type("error")
    assert [(e["code"], e["fatal"]) for e in errors] == [("lid_unavailable", False)], errors
    assert "nothing from it for 4 s" in errors[0]["message"]
    assert not result.of_type("lid")  # nobody answered: no `lid` event (docs/protocol.md)
    text = " ".join(f["text"] for f in result.of_type("asr_final"))
    assert wer([(clips / "en" / "quick_brown_fox.txt").read_text()], [text]) <= 0.2, text
    assert result.events[-1]["type"] == "end" and result.close_code == 1000
