"""Bounds on what a client may send (issue 10 findings): JSON depth, `start` fields, flowId meaning,
the text-frame limit in bytes, and no accepted audio lost to a bad control frame or a bug."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from orchestrator.core.events import StageName
from orchestrator.core.protocol import (
    MAX_ENDPOINTING_MS,
    MAX_HOTWORD_CHARS,
    MAX_HOTWORDS,
    MAX_JSON_DEPTH,
    MIN_ENDPOINTING_MS,
    Close,
    json_depth_exceeds,
    parse_control,
    valid_flow_id,
)
from orchestrator.core.session import Session, SessionConfig, State
from orchestrator.driver import SessionDriver
from tests.fakes import SECOND, FakeConnection, FakeStage
from tests.poll import seconds
from tests.schemas import check_event, validator

pytestmark = pytest.mark.unit
CFG = SessionConfig(stages=(StageName.COMPRESS,))
FRAME = b"\x00\x01" * 320
DEEP = "[" * 25_000 + "]" * 25_000  # (50 kB, under the frame limit) what crashed the session with RecursionError / 1011


def start_msg(**over: Any) -> str:
    msg: dict[str, Any] = {"type": "start", "flowId": "f1", "return": ["record_url", "metrics"]}
    msg.update(over)
    return json.dumps(msg)


def first_error(s: Session) -> dict[str, Any]:
    events = s.events_to_send()
    for e in events:
        check_event(e)
    return next(e for e in events if e["type"] == "error")


# ----- JSON depth -----


@pytest.mark.parametrize("text", [DEEP, '{"a":' * 10_000 + "1" + "}" * 10_000, '{"type":"flush","x":' + DEEP + "}"])
def test_deep_json_before_start_is_refused_with_its_own_code(text: str) -> None:
    s = Session(CFG, 0.0, "gen")
    s.receive_text(text, 0.0)
    error = first_error(s)
    assert error["code"] == "json_too_deep" and error["fatal"] is True
    assert s.close == (Close.POLICY_VIOLATION, "json_too_deep")


def test_deep_json_mid_stream_still_drains_the_accepted_audio() -> None:
    s = Session(CFG, 0.0, "gen")
    s.receive_text(start_msg(), 0.0)
    for _ in range(4):
        s.receive_binary(FRAME * 50, 0.1)  # 4 s accepted
    s.receive_text(DEEP, 0.2)
    assert first_error(s)["code"] == "json_too_deep"
    assert sum(len(b.pcm) for b in s.audio_to_stages()) == len(FRAME) * 200  # all of it goes to the archive
    assert s.state is State.DRAINING and s.close is None  # waits for the archive's answer


def test_depth_at_the_limit_parses_and_one_more_does_not() -> None:
    at_limit = '{"type":"flush","x":' + "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1) + "}"
    assert parse_control(at_limit)["type"] == "flush"
    over = '{"type":"flush","x":' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}"
    assert json_depth_exceeds(over)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"type": "start", "hints": {"domain": "[" * 5000 + '\\"{' * 100}})
    assert not json_depth_exceeds(text)


# ----- start fields -----


@pytest.mark.parametrize(
    "hints",
    [
        {"hotwords": ["w"] * 10_000},  # the finding: turned the transcript into "w, w, w, ..."
        {"hotwords": ["w"] * (MAX_HOTWORDS + 1)},
        {"hotwords": ["x" * (MAX_HOTWORD_CHARS + 1)]},
        {"hotwords": ["y" * MAX_HOTWORD_CHARS] * 11},  # 528 characters in all
        {"hotwords": ["  "]},
        {"hotwords": ["a\nb"]},
        {"hotwords": [1]},
        {"domain": "d" * 65},
        {"domain": "a\x00b"},
        {"user_lang_pref": "english please"},
        {"user_lang_pref": "\ud800"},
    ],
)
def test_start_fields_out_of_bounds_are_invalid_start(hints: dict[str, Any]) -> None:
    s = Session(CFG, 0.0, "gen")
    s.receive_text(start_msg(hints=hints), 0.0)
    assert first_error(s)["code"] == "invalid_start"
    assert s.close == (Close.PROTOCOL_ERROR, "invalid_start")


def test_bounded_start_fields_within_limits_are_accepted() -> None:
    hints = {"hotwords": [" Kubernetes "] * MAX_HOTWORDS, "domain": "Medical", "user_lang_pref": "zh-Hant-TW"}
    s = Session(CFG, 0.0, "gen")
    s.receive_text(start_msg(hints=hints), 0.0)
    assert s.state is State.STREAMING
    assert s.start is not None and s.start.hotwords == ("Kubernetes",) * MAX_HOTWORDS


@pytest.mark.parametrize(
    "over",
    [{"return": ["asr"] * 17}, {"auth": {"token": "t" * 20_000}}],
)
def test_return_and_token_are_bounded(over: dict[str, Any]) -> None:
    s = Session(CFG, 0.0, "gen")
    s.receive_text(start_msg(**over), 0.0)
    assert first_error(s)["code"] == "invalid_start"


@pytest.mark.parametrize("flow_id", ["a" + "." * 127, "a..b", "x/../y", "." * 128, "..", "a-..", "-a", ".a"])
def test_flow_id_without_parent_or_dot_only_names(flow_id: str) -> None:
    assert not valid_flow_id(flow_id)
    s = Session(CFG, 0.0, "gen")
    s.receive_text(start_msg(flowId=flow_id), 0.0)
    assert first_error(s)["code"] == "invalid_flow_id"


@pytest.mark.parametrize("flow_id", ["a.b", "f1", "a.b.c-d_e", "A" * 128])
def test_flow_ids_with_single_dots_stay_valid(flow_id: str) -> None:
    assert valid_flow_id(flow_id)


# ----- frame size in bytes -----


def test_text_frame_limit_counts_utf8_bytes_not_characters() -> None:
    """180 kB of multibyte text passed a 64 kB limit: 60 000 characters of 3 bytes each."""
    s = Session(CFG, 0.0, "gen")
    s.receive_text('{"type":"start","hints":{"domain":"' + "€" * 60_000 + '"}}', 0.0)
    error = first_error(s)
    assert error["code"] == "frame_too_large"
    assert s.close == (Close.MESSAGE_TOO_BIG, "frame_too_large")


def test_a_multibyte_frame_under_the_byte_limit_is_read() -> None:
    s = Session(SessionConfig(max_frame_bytes=1000, stages=()), 0.0, "gen")
    s.receive_text(start_msg(hints={"domain": "é" * 60}), 0.0)  # ~200 bytes
    assert s.state is State.STREAMING


def test_unknown_type_message_does_not_echo_a_huge_type() -> None:
    s = Session(CFG, 0.0, "gen")
    s.receive_text(json.dumps({"type": "z" * 50_000}), 0.0)
    error = first_error(s)
    assert error["code"] == "unknown_type" and len(error["message"]) < 200


# ----- nothing accepted is lost, whatever the input -----


async def run_driver(conn: FakeConnection, session: Session, stage: FakeStage) -> None:
    driver = SessionDriver(session, conn, [stage])
    await asyncio.wait_for(driver.run(), seconds(5))


async def test_deep_json_mid_stream_over_the_driver_archives_the_audio_and_closes_1008() -> None:
    conn, archive = FakeConnection(), FakeStage(StageName.COMPRESS)
    conn.incoming.put_nowait(start_msg())
    for _ in range(4):
        conn.incoming.put_nowait(SECOND)
    conn.incoming.put_nowait(DEEP)
    await run_driver(conn, Session(CFG, 0.0, "gen"), archive)
    assert archive.audio_bytes == 4 * len(SECOND)
    assert [e["code"] for e in conn.sent if e["type"] == "error"] == ["json_too_deep"]
    assert conn.kinds()[-1] == "end" and conn.sent[-1]["reason"] == "error"
    assert conn.close_code == 1008


class BuggySession(Session):
    """A session with a bug on one kind of message: the driver must still drain what was accepted."""

    def receive_text(self, text: str, now: float) -> None:
        if "boom" in text:
            raise KeyError("a bug")
        super().receive_text(text, now)


async def test_a_bug_on_a_client_message_drains_the_session_instead_of_dropping_its_audio() -> None:
    conn, archive = FakeConnection(), FakeStage(StageName.COMPRESS)
    conn.incoming.put_nowait(start_msg())
    conn.incoming.put_nowait(SECOND)
    conn.incoming.put_nowait('{"type":"boom"}')
    await run_driver(conn, BuggySession(CFG, 0.0, "gen"), archive)
    assert archive.audio_bytes == len(SECOND)
    assert [e["code"] for e in conn.sent if e["type"] == "error"] == ["internal_error"]
    assert conn.kinds()[-1] == "end" and conn.close_code == 1011


@pytest.mark.parametrize(
    ("start", "valid"),
    [
        (
            {"type": "start", "flowId": "a.b", "hints": {"hotwords": ["k"] * MAX_HOTWORDS, "user_lang_pref": "zh-TW"}},
            True,
        ),
        ({"type": "start", "flowId": "a..b"}, False),
        ({"type": "start", "hints": {"hotwords": ["k"] * (MAX_HOTWORDS + 1)}}, False),
        ({"type": "start", "hints": {"hotwords": ["x" * (MAX_HOTWORD_CHARS + 1)]}}, False),
        ({"type": "start", "hints": {"domain": "d" * 65}}, False),
        ({"type": "start", "endpointing": MIN_ENDPOINTING_MS}, True),
        ({"type": "start", "endpointing": MAX_ENDPOINTING_MS}, True),
        ({"type": "start", "endpointing": False}, True),
        ({"type": "start", "endpointing": True}, True),
        ({"type": "start", "endpointing": MIN_ENDPOINTING_MS - 1}, False),
        ({"type": "start", "endpointing": MAX_ENDPOINTING_MS + 1}, False),
        ({"type": "start", "endpointing": "500"}, False),
        ({"type": "start", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, True),
        ({"type": "start", "traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"}, False),
        ({"type": "start", "traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}, False),
        ({"type": "start", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"}, False),
    ],
)
def test_the_published_start_schema_states_the_same_bounds(start: dict[str, Any], valid: bool) -> None:
    assert validator("start").is_valid(start) is valid
    s = Session(CFG, 0.0, "gen")
    s.receive_text(json.dumps(start), 0.0)
    assert (s.state is State.STREAMING) is valid


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "traceparent",
    [
        TRACEPARENT + "-00",  # a field more: only version 00's four are accepted
        TRACEPARENT.upper(),
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",  # all-zero span id
        "ff" + TRACEPARENT[2:],
        "x" * 20_000,
        "",
        42,
    ],
)
def test_a_bad_traceparent_is_invalid_start(traceparent: object) -> None:
    s = Session(CFG, 0.0, "gen")
    s.receive_text(start_msg(traceparent=traceparent), 0.0)
    assert first_error(s)["code"] == "invalid_start"


def test_a_w3c_traceparent_is_kept_for_the_trace() -> None:
    s = Session(CFG, 0.0, "gen")
    s.receive_text(start_msg(traceparent=TRACEPARENT), 0.0)
    assert s.state is State.STREAMING
    assert s.start is not None and s.start.traceparent == TRACEPARENT
