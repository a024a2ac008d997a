import itertools
import json

import pytest

from orchestrator.core.events import (
    LangDetected,
    RecordPending,
    RecordReady,
    SpeechBoundary,
    StageDone,
    StageFailed,
    StageLatency,
    StageName,
    Transcript,
)
from orchestrator.core.protocol import Close, ErrorCode
from orchestrator.core.session import Session, SessionConfig, State
from tests.schemas import check_event

pytestmark = pytest.mark.unit
CFG = SessionConfig(stages=("vad", "compress"))
FRAME = b"\x00\x01" * 320


def start_msg(**over: object) -> str:
    msg = {
        "type": "start",
        "flowId": "f1",
        "audio": {"codec": "pcm_s16le", "sr": 16000, "channels": 1},
        "return": ["record_url", "metrics", "vad"],
    }
    msg.update(over)
    return json.dumps(msg)


def started(cfg: SessionConfig = CFG) -> Session:
    s = Session(cfg, 0.0, "gen")
    s.receive_text(start_msg(), 0.0)
    return s


def types(events: list[dict]) -> list[str]:
    for e in events:
        check_event(e)  # every event the core makes matches its published schema
    return [e["type"] for e in events]


def finish_stages(s: Session) -> None:
    s.stage_event(StageDone("vad"), 1.0)
    s.stage_event(StageDone("compress"), 1.0)


def test_ack_first_then_audio_then_end_last() -> None:
    s = started()
    ack = s.events_to_send()
    assert types(ack) == ["ack"]
    assert ack[0]["audio"] == {
        "codec": "pcm_s16le",
        "sr": 16000,
        "channels": 1,
        "chunk_ms": 20,
        "frame_ms": 20,
    }
    s.receive_binary(FRAME * 3, 0.1)
    blocks = s.audio_to_stages()
    assert len(blocks) == 1 and len(blocks[0].pcm) == 3 * 640
    s.receive_text('{"type":"flush"}', 0.2)
    assert s.audio_ended and s.state is State.DRAINING and s.close is None
    s.stage_event(SpeechBoundary("start", 20_000_000), 0.3)
    s.stage_event(SpeechBoundary("end", 60_000_000), 0.3)
    s.stage_event(StageLatency("vad", 3.0), 0.3)
    s.stage_event(StageDone("vad"), 0.3)
    s.stage_event(RecordReady("http://h/records/f1.ogg", 0.06, 100, "ogg/opus", "stored"), 0.4)
    s.stage_event(StageDone("compress"), 0.4)
    events = s.events_to_send()
    assert types(events) == ["vad", "vad", "record_url", "metrics", "end"]
    metrics = events[3]
    assert metrics["audio_s"] == 0.06 and metrics["bytes_in"] == 1920 and metrics["speech_s"] == 0.04
    assert metrics["stages"]["vad"]["latency_ms_p50"] == 3.0
    assert events[-1]["reason"] == "flush"
    assert s.close == (Close.NORMAL, "flush")


def test_return_filters_families_but_not_ack_end_error() -> None:
    s = Session(CFG, 0.0, "gen")
    s.receive_text(start_msg(**{"return": []}), 0.0)
    s.receive_text('{"type":"flush"}', 0.1)
    s.stage_event(RecordReady("http://h/x", 0.0, 0, "ogg/opus", "stored"), 0.2)
    s.stage_event(StageFailed("vad", "UNAVAILABLE"), 0.2)
    s.stage_event(StageDone("compress"), 0.2)
    assert types(s.events_to_send()) == ["ack", "error", "end"]


def test_archive_failure_with_the_audio_spooled_is_said_once_and_record_url_may_follow() -> None:
    s = started()
    s.events_to_send()
    s.receive_binary(FRAME, 0.1)
    s.stage_event(RecordPending("UNAVAILABLE: archive died"), 0.2)
    s.stage_event(RecordPending("UNAVAILABLE: again"), 0.3)  # said once
    s.receive_text('{"type":"flush"}', 0.4)
    s.stage_event(StageDone("vad"), 0.5)
    assert s.record_pending and s.close is None  # the archive stage still works on it
    s.stage_event(RecordReady("http://h/records/f1.flac", 0.02, 100, "flac", "stored"), 0.6)
    s.stage_event(StageDone("compress"), 0.6)
    events = s.events_to_send()
    assert types(events) == ["error", "record_url", "metrics", "end"]
    assert events[0]["code"] == "archive_unavailable" and events[0]["fatal"] is False
    assert events[0]["mode"] == "spooled" and events[0]["transcript_path"] == "/v1/flows/f1/transcript"
    assert not s.record_pending and s.record_url == "http://h/records/f1.flac"


def test_a_spooled_record_of_a_record_only_session_still_gets_its_deferred_job() -> None:
    cfg = SessionConfig(stages=("asr", "compress"), deferred_transcripts=True)
    s = started(cfg)
    s.stage_event(StageFailed("asr", "UNAVAILABLE"), 0.1)
    s.stage_event(RecordPending("UNAVAILABLE: archive died"), 0.2)
    assert s.needs_deferred_transcript and s.record_url is None  # the job waits for the stored record
    s.stage_event(StageFailed("compress", "the spool could not keep it"), 0.3)
    assert not s.record_pending and not s.needs_deferred_transcript  # nothing will ever be stored


def test_missing_flow_id_is_generated() -> None:
    s = Session(CFG, 0.0, "generated-id")
    s.receive_text('{"type":"start"}', 0.0)
    assert s.events_to_send()[0]["flowId"] == "generated-id"


@pytest.mark.parametrize(
    ("text", "code", "close"),
    [
        ("{nope", ErrorCode.INVALID_JSON, Close.PROTOCOL_ERROR),
        ("[1,2]", ErrorCode.INVALID_MESSAGE, Close.PROTOCOL_ERROR),
        ('{"type":"dance"}', ErrorCode.UNKNOWN_TYPE, Close.PROTOCOL_ERROR),
        ('{"type":"flush"}', ErrorCode.FLUSH_BEFORE_START, Close.PROTOCOL_ERROR),
        (start_msg(audio={"codec": "opus"}), ErrorCode.UNSUPPORTED_CODEC, Close.UNSUPPORTED_DATA),
        (start_msg(audio={"sr": 8000}), ErrorCode.UNSUPPORTED_SAMPLE_RATE, Close.UNSUPPORTED_DATA),
        (start_msg(audio={"channels": 2}), ErrorCode.UNSUPPORTED_CHANNELS, Close.UNSUPPORTED_DATA),
        (start_msg(audio={"sr": "16000"}), ErrorCode.INVALID_START, Close.PROTOCOL_ERROR),
        (start_msg(flowId="../etc/passwd"), ErrorCode.INVALID_FLOW_ID, Close.PROTOCOL_ERROR),
        (start_msg(**{"return": ["telepathy"]}), ErrorCode.INVALID_START, Close.PROTOCOL_ERROR),
    ],
)
def test_bad_first_message_gets_error_then_close(text: str, code: ErrorCode, close: Close) -> None:
    s = Session(CFG, 0.0, "gen")
    s.receive_text(text, 0.0)
    events = s.events_to_send()
    assert types(events) == ["error"]
    assert events[0]["code"] == code.value and events[0]["fatal"] is True and events[0]["message"]
    assert s.close == (close, code.value)


def test_binary_before_start() -> None:
    s = Session(CFG, 0.0, "gen")
    s.receive_binary(FRAME, 0.0)
    assert s.events_to_send()[0]["code"] == "audio_before_start"
    assert s.close == (Close.PROTOCOL_ERROR, "audio_before_start")


def test_error_after_start_keeps_accepted_audio_and_ends_cleanly() -> None:
    s = started()
    s.events_to_send()
    s.receive_binary(FRAME + b"\x01" * 100, 0.1)
    s.receive_text(start_msg(), 0.2)  # duplicate start
    blocks = s.audio_to_stages()
    assert sum(len(b.pcm) for b in blocks) == 740  # the partial frame is flushed, not lost
    events = s.events_to_send()
    assert types(events) == ["error"] and events[0]["code"] == "duplicate_start"
    assert s.close is None  # waits for the archive
    finish_stages(s)
    assert types(s.events_to_send()) == ["metrics", "end"]
    assert s.close == (Close.PROTOCOL_ERROR, "duplicate_start")


def test_oversize_frame() -> None:
    s = started(SessionConfig(max_frame_bytes=1000, stages=()))
    s.events_to_send()
    s.receive_binary(b"\x00" * 1002, 0.1)
    events = s.events_to_send()
    assert types(events) == ["error", "metrics", "end"]
    assert events[0]["code"] == "frame_too_large"
    assert s.close == (Close.MESSAGE_TOO_BIG, "frame_too_large")


def test_odd_trailing_byte_is_reported_not_fatal() -> None:
    s = started(SessionConfig(stages=()))
    s.events_to_send()
    s.receive_binary(b"\x00" * 641, 0.1)
    s.receive_text('{"type":"flush"}', 0.2)
    events = s.events_to_send()
    assert types(events) == ["error", "metrics", "end"]
    assert events[0]["code"] == "odd_byte_count" and events[0]["fatal"] is False
    assert s.close == (Close.NORMAL, "flush")


def test_idle_flush_after_flush_idle_s() -> None:
    s = started(SessionConfig(flush_idle_s=3.0, stages=()))
    s.receive_binary(FRAME, 1.0)
    s.tick(3.9)
    assert s.state is State.STREAMING
    s.tick(4.0)
    assert s.end_reason == "idle" and s.close == (Close.NORMAL, "idle")


def test_start_timeout() -> None:
    s = Session(SessionConfig(start_timeout_s=5.0), 0.0, "gen")
    s.tick(4.9)
    assert s.close is None
    s.tick(5.0)
    assert s.events_to_send()[0]["code"] == "start_timeout"
    assert s.close == (Close.POLICY_VIOLATION, "start_timeout")


def test_disconnect_flushes_and_waits_for_stages() -> None:
    s = started()
    s.receive_binary(FRAME, 0.1)
    s.receive_disconnect(0.2)
    assert s.end_reason == "disconnect" and s.audio_ended and s.close is None
    finish_stages(s)
    assert s.close == (Close.NORMAL, "disconnect")


def test_stage_failure_is_reported_and_session_goes_on() -> None:
    s = started()
    s.events_to_send()
    s.stage_event(StageFailed("vad", "UNAVAILABLE: connection refused"), 0.1)
    events = s.events_to_send()
    assert events[0]["code"] == "vad_unavailable" and events[0]["fatal"] is False
    s.receive_binary(FRAME, 0.2)
    assert s.audio_to_stages()
    s.receive_text('{"type":"flush"}', 0.3)
    s.stage_event(StageDone("compress"), 0.4)
    assert s.close == (Close.NORMAL, "flush")


def test_audio_after_flush_is_reported() -> None:
    s = started()
    s.receive_text('{"type":"flush"}', 0.1)
    s.events_to_send()
    s.receive_binary(FRAME, 0.2)
    assert s.events_to_send()[0]["code"] == "audio_after_flush"
    assert not s.audio_to_stages()


def test_refusal_before_anything() -> None:
    s = Session(CFG, 0.0, "gen")
    s.refuse(ErrorCode.TOO_MANY_SESSIONS, "full")
    assert s.events_to_send()[0]["code"] == "too_many_sessions"
    assert s.close == (Close.TRY_AGAIN_LATER, "too_many_sessions")


def test_partials_throttled_newest_wins_and_final_supersedes() -> None:
    s = Session(SessionConfig(partial_interval_ms=250, stages=("asr",)), 0.0, "gen")
    s.receive_text(start_msg(**{"return": ["asr"]}), 0.0)
    s.events_to_send()

    def partial(text: str, t: float) -> None:
        s.stage_event(Transcript(False, text, 0.0, t), t)

    partial("a", 1.00)
    partial("ab", 1.10)
    partial("abc", 1.20)
    assert [e["text"] for e in s.events_to_send()] == ["a"]
    assert s.partial_due_at == pytest.approx(1.25)
    s.tick(1.24)
    assert s.events_to_send() == []
    s.tick(1.25)
    assert [e["text"] for e in s.events_to_send()] == ["abc"]
    assert s.partial_due_at is None
    partial("abcd", 1.30)  # held: within the interval
    s.stage_event(Transcript(True, "abcde", 0.0, 1.3, "en"), 1.31)
    s.tick(2.0)
    events = s.events_to_send()
    assert types(events) == ["asr_final"] and events[0]["lang"] == "en" and events[0]["ts"] == [0.0, 1.3]


def test_partials_never_closer_than_interval_property() -> None:
    import random

    rng = random.Random(7)
    s = Session(SessionConfig(partial_interval_ms=250, stages=("asr",)), 0.0, "gen")
    s.receive_text(start_msg(**{"return": ["asr"]}), 0.0)
    s.events_to_send()
    sent_at = []
    t = 0.0
    for i in range(500):
        t += rng.uniform(0.0, 0.2)
        s.tick(t)
        s.stage_event(Transcript(False, str(i), 0.0, t), t)
        sent_at += [t for e in s.events_to_send() if e["type"] == "asr_partial"]
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert len(sent_at) > 10 and min(gaps) >= 0.25 - 1e-9


def test_lid_event_carries_source_and_pool_and_sets_the_language() -> None:
    s = Session(SessionConfig(stages=(StageName.LID, StageName.ASR)), 0.0, "gen", lambda lang, domain: "multi")
    s.receive_text(start_msg(**{"return": ["lid"]}), 0.0)
    s.events_to_send()
    s.stage_event(LangDetected("zh", 0.98765), 0.5)
    (event,) = s.events_to_send()
    check_event(event)
    assert event == {
        "type": "lid",
        "flowId": "f1",
        "seq": 2,
        "lang": "zh",
        "score": 0.9877,
        "source": "lid",
        "pool": "multi",
    }
    assert s.lang == "zh"
