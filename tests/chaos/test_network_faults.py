"""Network faults between the gateway and one stage, injected by a TCP fault proxy
(tests/faultproxy.py) in the real stack: a hung LID, a slow VAD, an ASR member gone mid-utterance.
Each test checks what the client receives and that the archive holds every second the gateway
accepted (the stored object decoded against `end.audio_s`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from devtools.client import StreamResult, stream_pcm
from speechgw_client import load_audio
from tests.archive_check import assert_archived_whole
from tests.chaos.netfaults import proxied_stack
from tests.chaos.sessions import ingress_bytes, stream_until, until_accepted
from tests.poll import seconds, wait_for
from tests.records import get_transcript
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


def test_asr_member_gone_mid_utterance(tmp_path: Path, clips: Path) -> None:
    """A pool of two ASR members; the one serving a session is cut mid-utterance (RST on its
    connection, new connections refused: its host is gone). That session goes record-only (a coded,
    non-fatal `asr_unavailable`, then `record_url` and `end`, every accepted second archived) and its
    deferred transcript is made on the other member; the next session is served live by the other
    member."""
    env = {
        **BASE_ENV,
        "ASR_ENGINE": "whisper",
        "ASR_MODEL": "tiny.en",
        "STAGE_TIMEOUT_SEC": "10",
        "JOBS_BACKOFF_BASE_SEC": "0.5",
        "JOBS_CAPACITY_POLL_SEC": "0.2",
    }
    pcm = load_audio(clips / "en" / "quick_brown_fox.wav")
    reference = (clips / "en" / "quick_brown_fox.txt").read_text()
    with proxied_stack(tmp_path, ("vad", "compress"), ("asr",), env, asr_members=2) as ps:
        members = [ps.proxies["asr.0"], ps.proxies["asr.1"]]

        async def cut_mid_utterance() -> tuple[StreamResult, int]:
            start = {"flowId": "member-gone", "return": ["asr", "record_url"]}
            task = await stream_until(ps.stack.url, pcm, start, "asr_partial", 20)  # the member is transcribing
            before = [m.proxy.upstream_bytes for m in members]
            await asyncio.sleep(0.3)
            grown = [m.proxy.upstream_bytes - b for m, b in zip(members, before, strict=True)]
            serving = grown.index(max(grown))  # the audio goes through this one
            members[serving].set(refuse=True)
            members[serving].reset()
            return await task, serving

        result, serving = asyncio.run(cut_mid_utterance())
        errors = result.of_type("error")
        assert [(e["code"], e["fatal"], e.get("mode")) for e in errors] == [("asr_unavailable", False, "record_only")]
        assert result.events[-1]["type"] == "end" and result.close_code == 1000
        assert result.events[-1]["audio_s"] == pytest.approx(len(pcm) / 32000, abs=0.02)
        assert_archived_whole(result.events)

        # The recording of the cut session is transcribed on the member that is left.
        def transcript_status() -> str:
            status, body = get_transcript(ps.stack.http_base, "member-gone")
            return str(body.get("status")) if status == 200 else f"http {status}"

        wait_for(lambda: transcript_status() == "done", 60, "deferred transcript on the other member")
        body = get_transcript(ps.stack.http_base, "member-gone")[1]
        assert wer([reference], [" ".join(f["text"] for f in body["finals"])]) <= 0.2

        # The next session: the other member, live, no error.
        after = asyncio.run(stream_pcm(ps.stack.url, pcm, speed=0, start={"return": ["asr", "record_url"]}))
        assert not after.of_type("error"), after.of_type("error")
        text = " ".join(f["text"] for f in after.of_type("asr_final"))
        assert wer([reference], [text]) <= 0.2, text
        assert members[1 - serving].proxy.connections >= 1


def test_vad_slow_sessions_finish_with_the_same_endpoints(tmp_path: Path, clips: Path) -> None:
    """VAD behind a slow link (150 ms ± 100 ms each way, 1 % of chunks stalled 400 ms): three
    sessions streamed as fast as possible still finish without an error, with the same speech
    endpoints as over a clean link, and every accepted second archived."""
    pcm = load_audio(clips / "en" / "counting.wav") * 3
    env = {**BASE_ENV, "STAGE_TIMEOUT_SEC": "10"}

    async def three(url: str, tag: str) -> list[StreamResult]:
        return list(
            await asyncio.gather(
                *(
                    stream_pcm(url, pcm, speed=0, start={"flowId": f"{tag}-{i}", "return": ["vad", "record_url"]})
                    for i in range(3)
                )
            )
        )

    with proxied_stack(tmp_path, ("compress",), ("vad",), env, seed=5) as ps:
        vad = ps.proxies["vad"]
        started = time.monotonic()
        clean = asyncio.run(three(ps.stack.url, "clean"))
        clean_s = time.monotonic() - started
        vad.set(latency_ms=150, jitter_ms=100, stall_rate=0.01, stall_ms=400)
        started = time.monotonic()
        slow = asyncio.run(three(ps.stack.url, "slow"))
        slow_s = time.monotonic() - started
        for result in slow:
            assert not result.of_type("error"), result.of_type("error")
            assert result.events[-1]["type"] == "end" and result.close_code == 1000
            assert result.events[-1]["audio_s"] == pytest.approx(len(pcm) / 32000, abs=0.02)
            assert_archived_whole(result.events)
    endpoints = [[(e["event"], e["ts"]) for e in r.of_type("vad")] for r in clean]
    assert endpoints[0] and all(e == endpoints[0] for e in endpoints)
    for result in slow:
        assert [(e["event"], e["ts"]) for e in result.of_type("vad")] == endpoints[0]
    assert vad.proxy.plan.chunks > 0
    print(f"\nthree sessions of {len(pcm) / 32000:.1f} s: {clean_s:.2f} s over a clean VAD link, {slow_s:.2f} s slow")


def test_archive_link_half_open_session_still_ends(tmp_path: Path, clips: Path) -> None:
    """The archive's answers stop reaching the gateway mid-session (half-open: the audio still flows
    to it, nothing comes back, nothing is closed). The session does not hang: `archive_unavailable`
    (`mode: "spooled"`) STAGE_TIMEOUT_SEC after the end of audio, then `end` without `record_url`.
    Once the link heals, the gateway's spool uploads the session again (same key) and the transcript
    endpoint gives the `record_url` of every accepted second."""
    env = {**BASE_ENV, "STAGE_TIMEOUT_SEC": "4", "ARCHIVE_RETRY_BASE_SEC": "0.5", "ARCHIVE_RETRY_MAX_SEC": "1"}
    pcm = load_audio(clips / "en" / "counting.wav")
    with proxied_stack(tmp_path, ("vad",), ("compress",), env) as ps:

        async def answers_lost_mid_session() -> StreamResult:
            baseline = await asyncio.to_thread(ingress_bytes, ps.stack.http_base)
            start = {"flowId": "half-open", "return": ["record_url", "vad"]}
            task = await stream_until(ps.stack.url, pcm, start, "ack")
            await until_accepted(ps.stack.http_base, baseline, 0.5)  # the archive has some of it
            ps.proxies["compress"].set(pause_down=True)
            return await asyncio.wait_for(task, seconds(30))

        result = asyncio.run(answers_lost_mid_session())
        errors = result.of_type("error")
        assert [(e["code"], e["fatal"], e.get("mode")) for e in errors] == [("archive_unavailable", False, "spooled")]
        assert "nothing from it for 4 s" in errors[0]["message"]
        assert not result.of_type("record_url") and result.of_type("vad")
        assert result.events[-1]["type"] == "end" and result.close_code == 1000

        def record_status() -> str:
            return str(get_transcript(ps.stack.http_base, "half-open")[1].get("record_status"))

        wait_for(lambda: record_status() == "pending", 10, "the record handed to the spool's uploader")
        ps.proxies["compress"].clear()  # the link heals
        wait_for(lambda: record_status() == "stored", 30, "re-upload")
        url = get_transcript(ps.stack.http_base, "half-open")[1]["record_url"]
        assert_archived_whole([{"type": "record_url", "url": url}, result.events[-1]])
