"""Resume by flowId in the sans-I/O session (docs/protocol.md#resume): numbered events, a dropped
client waited for, the replay, the window, and the refusals."""

from __future__ import annotations

import json

import pytest

from orchestrator.core.events import RecordReady, SpeechBoundary, StageDone, StageName
from orchestrator.core.protocol import Close, ErrorCode, ResumeRequest
from orchestrator.core.resume import EventLog
from orchestrator.core.session import Session, SessionConfig, State
from tests.schemas import check_event

pytestmark = pytest.mark.unit
CFG = SessionConfig(stages=(StageName.VAD, StageName.COMPRESS), flush_idle_s=3.0, resume_window_s=30.0)
SECOND = b"\x01\x00" * 16000


def start(**over: object) -> str:
    msg: dict[str, object] = {"type": "start", "flowId": "f1", "return": ["vad", "record_url", "metrics"]}
    msg.update(over)
    return json.dumps(msg)


def streaming(cfg: SessionConfig = CFG) -> Session:
    s = Session(cfg, 0.0, "gen")
    s.receive_text(start(), 0.0)
    return s


def sent(s: Session) -> list[dict[str, object]]:
    events = s.events_to_send()
    for e in events:
        check_event(e)
    return events


def finish(s: Session, now: float) -> None:
    s.stage_event(StageDone(StageName.VAD), now)
    s.stage_event(RecordReady("http://h/records/f1.flac", s.audio_s, 10, "flac", "stored"), now)
    s.stage_event(StageDone(StageName.COMPRESS), now)


def test_every_event_is_numbered_from_one_without_gaps_and_filtered_families_take_no_number() -> None:
    s = Session(CFG, 0.0, "gen")
    s.receive_text(start(**{"return": ["record_url"]}), 0.0)  # no vad events wanted
    s.receive_binary(SECOND, 0.1)
    s.stage_event(SpeechBoundary("start", 0), 0.2)
    s.receive_text('{"type":"flush"}', 0.3)
    finish(s, 0.4)
    events = sent(s)
    assert [e["type"] for e in events] == ["ack", "record_url", "end"]
    assert [e["seq"] for e in events] == [1, 2, 3]


def test_a_dropped_client_is_waited_for_with_stages_open_and_no_idle_flush() -> None:
    s = streaming()
    s.receive_binary(SECOND, 0.5)
    sent(s)
    s.receive_disconnect(1.0, dropped=True)
    assert s.awaiting_resume and s.state is State.STREAMING and s.pending_stages == {"vad", "compress"}
    s.tick(20.0)  # far past FLUSH_IDLE_SEC: a client away is not idle
    assert s.state is State.STREAMING and s.end_reason is None and sent(s) == []


def test_resume_answers_an_ack_with_where_the_audio_continues_then_the_events_after_last_seq() -> None:
    s = streaming()
    s.receive_binary(SECOND + b"\x01\x00" * 100, 0.5)
    s.stage_event(SpeechBoundary("start", 100_000_000), 0.6)  # seq 2
    assert [e["seq"] for e in sent(s)] == [1, 2]
    s.receive_disconnect(1.0, dropped=True)
    s.stage_event(SpeechBoundary("end", 900_000_000), 2.0)  # seq 3, made while the client is away
    sent(s)  # written to the dead connection: lost there, kept in the log
    request = ResumeRequest(last_seq=1, audio_s=1.2)
    assert s.check_resume(request) is None
    s.resume(request, 5.0)
    ack, *replay = sent(s)
    assert ack["type"] == "ack" and "seq" not in ack
    accepted = len(SECOND) + 200
    assert ack["resume"] == {
        "last_seq": 3,
        "resume_from_s": accepted / 32000,
        "resume_from_bytes": accepted,
        "audio_ended": False,
    }
    assert [(e["type"], e["seq"]) for e in replay] == [("vad", 2), ("vad", 3)]
    assert not s.awaiting_resume and s.resume_outcomes() == ["resumed"]
    # The timeline goes on where it stopped: the next audio follows the accepted samples.
    s.audio_to_stages()
    s.receive_binary(b"\x01\x00" * 220, 5.1)
    (block,) = s.audio_to_stages()
    assert block.pts_ns == 1_000_000_000 and block.seq == 50
    s.stage_event(SpeechBoundary("start", 1_200_000_000), 5.2)
    assert [e["seq"] for e in sent(s)] == [4]


def test_the_idle_timer_starts_again_at_the_resume() -> None:
    s = streaming()
    s.receive_binary(SECOND, 0.5)
    s.receive_disconnect(1.0, dropped=True)
    s.resume(ResumeRequest(0, 1.0), 10.0)
    s.tick(12.0)
    assert s.state is State.STREAMING
    s.tick(13.0)
    assert s.state is State.DRAINING and s.end_reason == "idle"


def test_without_a_resume_in_the_window_the_session_is_flushed_as_on_a_disconnect() -> None:
    s = streaming()
    s.receive_binary(SECOND, 0.5)
    s.receive_disconnect(1.0, dropped=True)
    s.tick(30.9)
    assert s.awaiting_resume
    s.tick(31.0)
    assert not s.awaiting_resume and s.state is State.DRAINING and s.end_reason == "disconnect"
    assert s.resume_outcomes() == ["lapsed"]
    finish(s, 31.5)
    assert [e["type"] for e in sent(s)][-3:] == ["record_url", "metrics", "end"]
    assert s.close == (Close.NORMAL, "disconnect")
    assert s.check_resume(ResumeRequest(0, 1.0)) == (
        ErrorCode.RESUME_EXPIRED,
        "the session has ended, or its resume window has",
    )
    s.receive_disconnect(32.0, dropped=True)  # the dead socket read again: no second window
    assert not s.awaiting_resume


def test_a_window_ended_while_draining_refuses_a_late_resume() -> None:
    s = streaming()
    s.receive_text('{"type":"flush"}', 0.5)
    s.receive_disconnect(1.0, dropped=True)  # cut while waiting for the last events
    assert s.awaiting_resume and s.state is State.DRAINING
    s.tick(31.0)
    code, _ = s.check_resume(ResumeRequest(0, 0.0)) or (None, "")
    assert code is ErrorCode.RESUME_EXPIRED


def test_a_session_that_ended_while_its_client_was_away_replays_its_end_on_resume() -> None:
    s = streaming()
    s.receive_binary(SECOND, 0.5)
    s.receive_text('{"type":"flush"}', 0.6)
    assert [e["seq"] for e in sent(s)] == [1]
    s.receive_disconnect(0.7, dropped=True)
    finish(s, 1.0)
    assert s.state is State.CLOSED and s.awaiting_resume  # the end waits for the client
    sent(s)
    s.resume(ResumeRequest(last_seq=1, audio_s=1.0), 2.0)
    ack, *rest = sent(s)
    assert ack["resume"]["audio_ended"] is True
    assert [e["type"] for e in rest] == ["record_url", "metrics", "end"] and [e["seq"] for e in rest] == [2, 3, 4]


def test_a_clean_close_flushes_at_once() -> None:
    s = streaming()
    s.receive_binary(SECOND, 0.5)
    s.receive_disconnect(1.0, dropped=False)
    assert not s.awaiting_resume and s.state is State.DRAINING and s.end_reason == "disconnect"


def test_with_no_window_a_drop_flushes_at_once() -> None:
    s = streaming(SessionConfig(stages=(StageName.VAD,), resume_window_s=0.0))
    s.receive_disconnect(1.0, dropped=True)
    assert not s.awaiting_resume and s.state is State.DRAINING
    assert s.check_resume(ResumeRequest(0, 0.0)) == (ErrorCode.RESUME_UNKNOWN, "this flow cannot be resumed")


def test_a_last_seq_past_the_events_sent_is_refused() -> None:
    s = streaming()
    s.receive_disconnect(1.0, dropped=True)
    refusal = s.check_resume(ResumeRequest(last_seq=9, audio_s=0.0))
    assert refusal is not None and refusal[0] is ErrorCode.INVALID_START


def test_events_older_than_the_buffer_are_reported_as_a_gap_after_the_replay() -> None:
    s = streaming(SessionConfig(stages=(StageName.VAD,), resume_buffer_events=3))
    for i in range(6):  # seq 2..7
        s.stage_event(SpeechBoundary("start" if i % 2 == 0 else "end", i * 100_000_000), 0.1)
    sent(s)
    s.receive_disconnect(1.0, dropped=True)
    s.resume(ResumeRequest(last_seq=2, audio_s=0.0), 2.0)
    _ack, *rest = sent(s)
    assert [e["seq"] for e in rest] == [5, 6, 7, 8]
    gap = rest[-1]
    assert gap["type"] == "error" and gap["code"] == "resume_gap" and gap["fatal"] is False
    assert "3..4" in gap["message"]


def test_start_resume_needs_a_flow_id_and_a_gateway() -> None:
    s = Session(CFG, 0.0, "gen")
    s.receive_text(json.dumps({"type": "start", "resume": {"last_seq": 1, "audio_s": 1.0}}), 0.0)
    (error,) = sent(s)
    assert error["code"] == "invalid_start"
    s = Session(CFG, 0.0, "gen")  # no admission: no other session to resume
    s.receive_text(start(resume={"last_seq": 1, "audio_s": 1.0}), 0.0)
    (error,) = sent(s)
    assert error["code"] == "resume_unknown" and s.close == (Close.POLICY_VIOLATION, "resume_unknown")


@pytest.mark.parametrize(
    "resume",
    [{"last_seq": -1, "audio_s": 0}, {"last_seq": "3"}, {"audio_s": True}, {"audio_s": -0.5}, []],
)
def test_a_malformed_resume_is_invalid_start(resume: object) -> None:
    s = Session(CFG, 0.0, "gen")
    s.receive_text(start(resume=resume), 0.0)
    (error,) = sent(s)
    assert error["code"] == "invalid_start"


def test_a_connection_handed_over_ends_without_a_word() -> None:
    s = Session(SessionConfig(stages=(StageName.VAD,), admission=True), 0.0, "gen")
    s.receive_text(start(resume={"last_seq": 0, "audio_s": 0}), 0.0)
    assert s.awaiting_admission and s.start is not None and s.start.resume == ResumeRequest(0, 0.0)
    s.hand_over()
    assert s.state is State.CLOSED and s.handed_over and s.close is None and sent(s) == []


def test_the_event_log_keeps_the_newest_and_counts_what_it_lost() -> None:
    log = EventLog(2)
    events = [log.number({"type": "vad"}) for _ in range(4)]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert log.after(4) == ([], 0)
    assert [e["seq"] for e in log.after(2)[0]] == [3, 4] and log.after(2)[1] == 0
    assert [e["seq"] for e in log.after(0)[0]] == [3, 4] and log.after(0)[1] == 2
