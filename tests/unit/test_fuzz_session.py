"""Stateful fuzzing of the session core (issue 10): any sequence of client frames, timer ticks, stage
answers and a disconnect. Whatever comes in, every event matches its schema, every error code and
close code is documented, nothing closes with 1011, nothing raises, and the audio accepted before any
error reaches the stages whole.

Deterministic in the suite (derandomized, bounded examples); `FUZZ_EXAMPLES=5000` runs it longer."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from orchestrator.core.events import RecordReady, SpeechBoundary, StageDone, StageFailed, StageName
from orchestrator.core.session import Session, SessionConfig, State
from tests.protocol_inputs import (
    CLIENT_CLOSE_CODES,
    GOOD_START,
    Frame,
    audio_frames,
    control_texts,
    documented_close_codes,
    documented_codes,
    wire,
)
from tests.schemas import check_event

pytestmark = pytest.mark.unit
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
CFG = SessionConfig(stages=(StageName.VAD, StageName.COMPRESS), max_frame_bytes=4096, start_timeout_s=5.0)


class SessionMachine(RuleBasedStateMachine):
    @initialize()
    def open(self) -> None:
        self.now = 0.0
        self.session = Session(CFG, self.now, "gen")
        self.accepted = 0  # audio bytes the session took while streaming
        self.to_stages = 0  # audio bytes it handed to the stages
        self.events: list[dict[str, Any]] = []
        self.started = False

    def _collect(self) -> None:
        for event in self.session.events_to_send():
            check_event(event)
            self.events.append(event)
        self.to_stages += sum(len(b.pcm) for b in self.session.audio_to_stages())
        self.session.stage_inputs()
        self.session.stages_to_stop()
        self.started = self.started or self.session.start is not None

    @rule(frame=control_texts)
    def text(self, frame: Frame) -> None:
        text = wire(frame)
        assert isinstance(text, str)
        self.session.receive_text(text, self.now)
        self._collect()

    @precondition(lambda self: self.session.state is State.AWAITING_START)
    @rule()
    def good_start(self) -> None:
        self.session.receive_text(GOOD_START, self.now)
        self._collect()

    @rule(frame=audio_frames)
    def audio(self, frame: Frame) -> None:
        data = wire(frame)
        assert isinstance(data, bytes)
        streaming = self.session.state is State.STREAMING
        self.session.receive_binary(data, self.now)
        if streaming and len(data) <= CFG.max_frame_bytes:
            self.accepted += len(data)
        self._collect()

    @rule(dt=st.sampled_from([0.0, 0.1, 1.0, 3.5, 6.0, 20.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.session.tick(self.now)
        self._collect()

    @rule(
        stage=st.sampled_from([StageName.VAD, StageName.COMPRESS, StageName.ASR]),
        kind=st.sampled_from(["done", "failed", "record", "boundary"]),
    )
    def stage_answers(self, stage: StageName, kind: str) -> None:
        event: Any = {
            "done": StageDone(stage),
            "failed": StageFailed(stage, "fuzzed failure"),
            "record": RecordReady("http://h/records/fuzz.flac", 1.0, 10, "flac", "stored"),
            "boundary": SpeechBoundary("start", 0),
        }[kind]
        self.session.stage_event(event, self.now)
        self._collect()

    @rule()
    def disconnect(self) -> None:
        self.session.receive_disconnect(self.now)
        self._collect()

    @invariant()
    def codes_are_documented(self) -> None:
        codes = documented_codes()
        for event in self.events:
            if event["type"] == "error":
                assert event["code"] in codes, event

    @invariant()
    def close_is_documented_and_never_internal(self) -> None:
        if self.session.close is None:
            return
        code, reason = self.session.close
        assert int(code) in CLIENT_CLOSE_CODES and int(code) in documented_close_codes(), self.session.close
        assert reason in documented_codes() or reason in ("flush", "disconnect", "idle"), reason
        if self.started:
            assert self.events[-1]["type"] == "end"  # a started session always ends with `end`

    @invariant()
    def accepted_audio_reaches_the_stages(self) -> None:
        if self.session.audio_ended:
            assert self.to_stages == self.accepted - self.accepted % 2  # only an odd last byte is dropped


SessionMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_session_survives_any_input = SessionMachine.TestCase
