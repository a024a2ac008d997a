"""What the session decides on its own: the language and pool, what running stages hear, when a
stage is given up, when the client is held (backpressure). No sockets, no tasks."""

import json

import pytest

from orchestrator.core.events import (
    Finalize,
    LangDetected,
    LanguageDecided,
    SpeechBoundary,
    StageDone,
    StageFailed,
    StageName,
    Transcript,
)
from orchestrator.core.session import Session, SessionConfig, State
from tests.clock import FakeClock
from tests.schemas import check_event

pytestmark = pytest.mark.unit
ALL = (StageName.VAD, StageName.LID, StageName.ASR, StageName.COMPRESS)
POOLS = {"en": "asr.en", "zh": "asr.multi"}


def route(lang: str, domain: str) -> str:
    return POOLS.get(lang, "asr.default")


def started(pref: str = "auto", stages: tuple[StageName, ...] = ALL, **cfg: float) -> Session:
    s = Session(SessionConfig(stages=stages, **cfg), 0.0, "gen", route)  # type: ignore[arg-type]
    start = {
        "type": "start",
        "flowId": "f1",
        "audio": {"codec": "pcm_s16le", "sr": 16000, "channels": 1},
        "return": ["lid", "asr", "record_url", "metrics"],
        "hints": {"user_lang_pref": pref},
    }
    s.receive_text(json.dumps(start), 0.0)
    return s


def lid_events(s: Session) -> list[dict[str, object]]:
    return [e for e in s.events_to_send() if e["type"] == "lid"]


def test_a_hint_decides_at_start_and_lid_is_not_run() -> None:
    s = started(pref="en")
    assert StageName.LID not in s.stages and StageName.LID not in s.pending_stages
    (lid,) = lid_events(s)
    assert (lid["lang"], lid["source"], lid["pool"], lid["score"]) == ("en", "hint", "asr.en", 1.0)
    assert s.stage_inputs() == [(StageName.ASR, LanguageDecided("en", "asr.en"))]
    assert s.lang == "en"


def test_the_lid_answer_decides_once() -> None:
    s = started()
    s.events_to_send()
    assert StageName.LID in s.stages and s.stage_inputs() == []
    s.stage_event(LangDetected("zh", 0.93), 1.0)
    s.stage_event(LangDetected("en", 0.99), 1.1)  # a second answer changes nothing
    (lid,) = lid_events(s)
    assert (lid["lang"], lid["source"], lid["pool"]) == ("zh", "lid", "asr.multi")
    assert s.stage_inputs() == [(StageName.ASR, LanguageDecided("zh", "asr.multi"))]


def test_undetermined_is_reported_and_routes_to_the_default_pool_without_a_language() -> None:
    s = started()
    s.events_to_send()
    s.stage_event(LangDetected("und", 0.31), 1.0)
    (lid,) = lid_events(s)
    assert (lid["lang"], lid["pool"]) == ("und", "asr.default")
    assert s.stage_inputs() == [(StageName.ASR, LanguageDecided("", "asr.default"))]
    assert s.lang == ""


@pytest.mark.parametrize("over", [StageFailed(StageName.LID, "UNAVAILABLE: down"), StageDone(StageName.LID)])
def test_lid_without_an_answer_means_the_default_route(over: StageFailed | StageDone) -> None:
    s = started()
    s.events_to_send()
    s.stage_event(over, 1.0)
    assert lid_events(s) == []  # nobody answered: no lid event
    assert s.stage_inputs() == [(StageName.ASR, LanguageDecided("", "asr.default"))]


def test_without_lid_the_default_route_is_decided_at_start() -> None:
    s = started(stages=(StageName.VAD, StageName.ASR))
    assert lid_events(s) == []
    assert s.stage_inputs() == [(StageName.ASR, LanguageDecided("", "asr.default"))]


def test_vad_boundaries_reach_the_asr_while_it_runs() -> None:
    s = started(pref="en")
    s.stage_inputs()
    s.stage_event(SpeechBoundary("start", 500_000_000), 0.6)
    assert s.stage_inputs() == [(StageName.ASR, SpeechBoundary("start", 500_000_000))]
    s.stage_event(StageFailed(StageName.ASR, "down"), 0.7)
    s.stage_event(SpeechBoundary("end", 900_000_000), 1.0)
    assert s.stage_inputs() == []


def test_stages_without_an_answer_are_given_up_after_the_timeout() -> None:
    s = started(pref="en", stage_timeout_s=5.0)
    s.receive_text('{"type":"flush"}', 10.0)
    s.stage_event(StageDone(StageName.VAD), 10.5)
    s.events_to_send()
    s.tick(14.9)
    assert s.stages_to_stop() == [] and s.state is State.DRAINING
    s.tick(15.0)
    assert sorted(s.stages_to_stop()) == [StageName.ASR, StageName.COMPRESS]
    kinds = [(e["type"], e.get("code")) for e in s.events_to_send()]
    assert ("error", "asr_unavailable") in kinds and ("error", "archive_unavailable") in kinds
    assert kinds[-1] == ("end", None) and s.state is State.CLOSED


def test_a_stage_far_behind_holds_the_client_and_is_not_mistaken_for_idle() -> None:
    s = started(pref="en", stage_backlog_s=2.0, stage_timeout_s=5.0, flush_idle_s=3.0)
    s.stage_backlog(StageName.ASR, 1.0, 0.0)
    assert s.accepts_audio
    s.stage_backlog(StageName.ASR, 2.5, 0.5)
    assert not s.accepts_audio
    s.tick(4.0)  # no audio for 4 s, but we held the client: no idle flush
    assert s.state is State.STREAMING
    s.stage_backlog(StageName.ASR, 0.5, 4.2)
    assert s.accepts_audio
    s.tick(6.0)  # idle counts from the release, not from the last audio
    assert s.state is State.STREAMING
    s.tick(7.3)
    assert s.state is State.DRAINING and s.end_reason == "idle"


def test_a_stage_that_stays_behind_is_failed_and_the_client_released() -> None:
    s = started(pref="en", stage_backlog_s=2.0, stage_timeout_s=5.0)
    s.events_to_send()
    s.stage_backlog(StageName.COMPRESS, 3.0, 1.0)
    s.tick(5.9)
    assert s.stages_to_stop() == [] and not s.accepts_audio
    s.tick(6.0)
    assert s.stages_to_stop() == [StageName.COMPRESS] and s.accepts_audio
    (error,) = [e for e in s.events_to_send() if e["type"] == "error"]
    assert error["code"] == "archive_unavailable" and "behind the audio" in error["message"]
    assert s.state is State.STREAMING  # the session goes on without it


def test_a_stage_still_answering_after_the_end_of_audio_is_not_given_up() -> None:
    """A batch client's audio ends long before its ASR has worked through it."""
    s = started(pref="en", stages=(StageName.ASR,), stage_timeout_s=5.0)
    s.receive_text('{"type":"flush"}', 10.0)
    for t in (13.0, 17.0, 21.0):
        s.stage_event(Transcript(True, "more", 0.0, 1.0, "en"), t)
        s.tick(t + 4.9)
        assert s.stages_to_stop() == []
    s.tick(26.0)
    assert s.stages_to_stop() == [StageName.ASR]


def test_keepalive_restarts_the_idle_timer_without_audio() -> None:
    clock = FakeClock(0.0)
    s = started(stages=(), flush_idle_s=3.0)
    s.receive_binary(b"\x00\x01" * 320, clock.advance(1.0))
    s.receive_text('{"type":"keepalive"}', clock.advance(2.5))  # 3.5 s
    s.tick(clock.advance(2.9))  # 6.4 s: 4.4 s after the audio, 2.9 s after the keepalive
    assert s.state is State.STREAMING and s.audio_s == 0.02
    assert [e["type"] for e in s.events_to_send()] == ["ack"]  # nothing answers a keepalive
    s.tick(clock.advance(0.1))
    assert s.end_reason == "idle"


def test_keepalive_before_start_does_not_hold_the_start_timeout() -> None:
    s = Session(SessionConfig(start_timeout_s=5.0), 0.0, "gen")
    s.receive_text('{"type":"keepalive"}', 4.0)
    s.tick(5.0)
    assert s.close is not None and s.close[1] == "start_timeout"


def test_finalize_tells_the_asr_where_the_audio_sent_so_far_ends() -> None:
    s = started(pref="en")
    s.stage_inputs()
    s.receive_binary(b"\x00\x01" * 800, 0.5)  # 50 ms: two whole frames go on, 10 ms wait
    s.receive_text('{"type":"finalize"}', 0.6)
    assert s.stage_inputs() == [(StageName.ASR, Finalize(40_000_000))]
    assert s.state is State.STREAMING and not s.audio_ended
    s.stage_event(Transcript(True, "hello", 0.0, 0.04, "en", from_finalize=True), 0.8)
    [final] = [e for e in s.events_to_send() if e["type"] == "asr_final"]
    assert final["from_finalize"] is True and final["text"] == "hello"
    check_event(final)
    s.tick(3.5)  # the finalize also counts as a keepalive
    assert s.state is State.STREAMING


def test_finalize_without_an_asr_stage_is_a_no_op_and_before_start_an_error() -> None:
    s = started(stages=(StageName.VAD,))
    s.receive_text('{"type":"finalize"}', 0.1)
    assert s.stage_inputs() == [] and s.state is State.STREAMING
    early = Session(SessionConfig(), 0.0, "gen")
    early.receive_text('{"type":"finalize"}', 0.0)
    [error] = early.events_to_send()
    assert error["code"] == "invalid_message" and early.close is not None


def test_endpointing_is_parsed_and_false_keeps_vad_endpoints_from_the_asr() -> None:
    s = Session(SessionConfig(stages=ALL), 0.0, "gen", route)
    s.receive_text(json.dumps({"type": "start", "hints": {"user_lang_pref": "en"}, "endpointing": False}), 0.0)
    assert s.start is not None and not s.start.vad_endpoints and s.start.endpointing_ms is None
    s.stage_inputs()
    s.stage_event(SpeechBoundary("start", 0), 0.1)
    assert s.stage_inputs() == []  # the client ends utterances (finalize) or the stream does
    s.receive_text('{"type":"finalize"}', 0.2)
    assert s.stage_inputs() == [(StageName.ASR, Finalize(0))]
    timed = started(pref="en")
    assert timed.start is not None and timed.start.endpointing_ms is None and timed.start.vad_endpoints
    t = Session(SessionConfig(stages=ALL), 0.0, "gen", route)
    t.receive_text(json.dumps({"type": "start", "endpointing": 800}), 0.0)
    assert t.start is not None and t.start.endpointing_ms == 800 and t.start.vad_endpoints
    t.stage_event(SpeechBoundary("start", 0), 0.1)
    assert (StageName.ASR, SpeechBoundary("start", 0)) in t.stage_inputs()


def test_a_silent_lid_is_given_up_first_and_the_asr_waiting_for_its_language_is_not() -> None:
    """A hung LID: the ASR holds its finals until the language is settled, so it is not failed with
    the LID; it gets the default route and a whole timeout from then to answer."""
    s = started(stage_timeout_s=5.0)
    s.receive_text('{"type":"flush"}', 10.0)
    s.stage_event(StageDone(StageName.VAD), 10.5)
    s.stage_event(StageDone(StageName.COMPRESS), 10.6)
    s.events_to_send()
    s.stage_inputs()
    s.tick(15.0)
    assert s.stages_to_stop() == [StageName.LID]
    assert s.stage_inputs() == [(StageName.ASR, LanguageDecided("", "asr.default"))]
    codes = [e.get("code") for e in s.events_to_send() if e["type"] == "error"]
    assert codes == ["lid_unavailable"]
    s.tick(19.9)
    assert s.stages_to_stop() == [] and StageName.ASR in s.pending_stages
    s.stage_event(Transcript(True, "released", 0.0, 1.0, ""), 15.2)
    s.stage_event(StageDone(StageName.ASR), 15.3)
    kinds = [e["type"] for e in s.events_to_send()]
    assert "asr_final" in kinds and "error" not in kinds
    assert kinds[-1] == "end" and s.state is State.CLOSED


def test_an_asr_silent_after_the_language_is_settled_is_still_given_up() -> None:
    s = started(stage_timeout_s=5.0)
    s.receive_text('{"type":"flush"}', 10.0)
    s.stage_event(LangDetected("en", 0.99), 11.0)
    s.tick(15.9)
    assert StageName.ASR not in s.stages_to_stop()
    s.tick(16.0)
    assert StageName.ASR in s.stages_to_stop()


def test_a_hung_archive_given_up_with_the_spool_on_says_where_record_url_will_be() -> None:
    """With the gateway's archive spool, a silent archive stage is stopped and its audio handed to the
    spool's uploader: the client is told `mode: "spooled"`, not that the recording is lost."""
    s = started(pref="en", stages=(StageName.COMPRESS,), stage_timeout_s=5.0, archive_spool=True)
    s.receive_binary(b"\x00\x01" * 3200, 1.0)
    s.receive_text('{"type":"flush"}', 1.0)
    s.events_to_send()
    s.tick(6.0)
    assert s.stages_to_stop() == [StageName.COMPRESS] and s.record_pending
    events = s.events_to_send()
    (error,) = [e for e in events if e["type"] == "error"]
    assert (error["code"], error["fatal"], error["mode"]) == ("archive_unavailable", False, "spooled")
    assert error["transcript_path"] == "/v1/flows/f1/transcript"
    check_event(error)
    assert events[-1]["type"] == "end" and s.state is State.CLOSED


def test_a_hung_archive_without_the_spool_is_lost_to_the_session() -> None:
    s = started(pref="en", stages=(StageName.COMPRESS,), stage_timeout_s=5.0)
    s.receive_binary(b"\x00\x01" * 3200, 1.0)
    s.receive_text('{"type":"flush"}', 1.0)
    s.events_to_send()
    s.tick(6.0)
    (error,) = [e for e in s.events_to_send() if e["type"] == "error"]
    assert error["code"] == "archive_unavailable" and "mode" not in error and not s.record_pending
