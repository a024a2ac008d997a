"""Thin gRPC adapter of `lid.v1.Lid/Detect` over the sans-I/O `EarlyAnswerPolicy` (SPEC §3, §4).

The handler races the next client frame against the outstanding detection, so it can answer while
the client is still streaming: it returns the `LidResult` and gRPC ends the call; the client's later
writes fail on its own side (or gRPC stops consuming its request iterator). Inference runs in an
executor (STYLE §7), and so does each frame's speech detection (`add_frame` runs the VAD), on an
executor of its own so that it never waits behind a language detection. Bad input ends only its own
call with INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from proto import common_pb2, lid_pb2, lid_pb2_grpc
from services.lid.config import LidConfig
from services.lid.engine import LanguageDetector
from services.lid.policy import Answer, Detection, EarlyAnswerPolicy, InvalidFrame, RunDetection
from services.lid.speech import SpeechProbability

log = logging.getLogger("services.lid")

_MS_BUCKETS = (10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000)
# SPEC §7 names `lid_latency_ms`: here from the first audio frame received to the answer sent.
LATENCY_MS = Histogram("lid_latency_ms", "First audio frame received -> LidResult sent (ms)", buckets=_MS_BUCKETS)
INFERENCE_MS = Histogram("lid_inference_ms", "One language detection in the executor (ms)", buckets=_MS_BUCKETS)
VAD_MS = Histogram(
    "lid_vad_ms", "Speech detection of one received message (ms)", buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50)
)
SPEECH_DELAY_MS = Histogram(
    "lid_speech_latency_ms", "Speech found in the flow -> LidResult sent (ms)", buckets=_MS_BUCKETS
)
RESULTS = Counter("lid_results_total", "Answers by detected language and reason", ["lang", "reason"])
CALLS = Counter("lid_calls_total", "Finished Detect calls by status code", ["code"])
ACTIVE = Gauge("lid_active_sessions", "Open lid.v1.Lid/Detect calls")
for _code in ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "INTERNAL", "CANCELLED"):
    CALLS.labels(_code)  # exported from the start, at 0

FrameIter = AsyncIterator[common_pb2.AudioFrame]


class LidServicer(lid_pb2_grpc.LidServicer):
    def __init__(
        self,
        config: LidConfig,
        executor: Executor,
        detector: LanguageDetector,
        vad_executor: Executor,
        new_vad: Callable[[], SpeechProbability],
    ) -> None:
        self._config = config
        self._executor = executor
        self._detector = detector
        self._vad_executor = vad_executor
        self._new_vad = new_vad
        self._sessions = 0

    async def Detect(self, request_iterator: FrameIter, context: grpc.aio.ServicerContext) -> lid_pb2.LidResult:
        if self._sessions >= self._config.max_sessions:
            CALLS.labels("RESOURCE_EXHAUSTED").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"LID is at its limit of {self._config.max_sessions} sessions",
            )
        self._sessions += 1
        ACTIVE.inc()
        policy = EarlyAnswerPolicy(self._config, self._new_vad())
        code = "CANCELLED"  # unless the call reaches one of the ends below
        try:
            answer, first_frame_at = await self._run(policy, request_iterator)
            code = "OK"
            return self._reply(policy.flow_id, answer, first_frame_at)
        except InvalidFrame as exc:
            code = "INVALID_ARGUMENT"
            log.warning(
                f"invalid frame: {exc}",
                extra={"stage": "lid", "flowId": policy.flow_id, "err_code": "invalid_frame"},
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # not reached: abort raises
        except Exception as exc:
            code = "INTERNAL"
            log.exception(
                "detection failed",
                extra={"stage": "lid", "flowId": policy.flow_id, "err_code": "lid_internal"},
            )
            await context.abort(grpc.StatusCode.INTERNAL, f"language detection failed: {exc}")
            raise  # not reached: abort raises
        finally:
            CALLS.labels(code).inc()
            self._sessions -= 1
            ACTIVE.dec()

    async def _run(self, policy: EarlyAnswerPolicy, frames: FrameIter) -> tuple[Answer, float | None]:
        """Feed frames and detections to the policy until it answers."""
        loop = asyncio.get_running_loop()
        reading: asyncio.Future[Any] | None = None
        inferring: asyncio.Future[Detection] | None = None
        first_frame_at: float | None = None
        speech_at: float | None = None  # when the message with the first speech was classified
        try:
            while True:
                step = policy.next_step()
                if isinstance(step, Answer):
                    if speech_at is not None:
                        SPEECH_DELAY_MS.observe((time.monotonic() - speech_at) * 1000)
                    return step, first_frame_at
                if isinstance(step, RunDetection):
                    inferring = loop.run_in_executor(self._executor, self._timed_detect, step)
                if reading is None and not policy.ended:
                    reading = asyncio.ensure_future(anext(frames, None))
                waiting = [f for f in (reading, inferring) if f is not None]
                done, _ = await asyncio.wait(
                    waiting, timeout=self._config.idle_timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
                if not done and inferring is None:  # idle client: answer on what it sent (SPEC §4)
                    policy.end_of_stream()
                if inferring is not None and inferring in done:
                    detection, inferring = inferring.result(), None
                    policy.on_detection(detection)
                if reading is not None and reading in done:
                    frame, reading = reading.result(), None
                    if policy.answer is not None:
                        continue  # answered: whatever the client sent since does not matter
                    if frame is None:
                        policy.end_of_stream()
                        continue
                    if first_frame_at is None and frame.pcm:
                        first_frame_at = time.monotonic()
                    await loop.run_in_executor(self._vad_executor, self._timed_add, policy, frame)
                    if speech_at is None and policy.first_speech_sample is not None:
                        speech_at = time.monotonic()
        finally:
            if reading is not None:
                reading.cancel()
            if inferring is not None:  # cannot stop a running inference; drop its result quietly
                inferring.add_done_callback(_consume)

    @staticmethod
    def _timed_add(policy: EarlyAnswerPolicy, frame: common_pb2.AudioFrame) -> None:
        t0 = time.perf_counter()
        try:
            policy.add_frame(frame.flow_id, frame.sr, frame.channels, frame.ns, frame.pcm, frame.last)
        finally:
            VAD_MS.observe((time.perf_counter() - t0) * 1000)

    def _timed_detect(self, request: RunDetection) -> Detection:
        t0 = time.perf_counter()
        try:
            return self._detector.detect(request)
        finally:
            INFERENCE_MS.observe((time.perf_counter() - t0) * 1000)

    def _reply(self, flow_id: str, answer: Answer, first_frame_at: float | None) -> lid_pb2.LidResult:
        latency_ms = (time.monotonic() - first_frame_at) * 1000 if first_frame_at is not None else 0.0
        if first_frame_at is not None:
            LATENCY_MS.observe(latency_ms)
        RESULTS.labels(answer.lang or "none", answer.reason).inc()
        log.info(
            f"lid answer {answer.lang or '-'} score={answer.score:.3f} ({answer.reason})",
            extra={
                "stage": "lid",
                "flowId": flow_id,
                "lang": answer.lang,
                "latency_ms": round(latency_ms, 1),
                "model": self._detector.engine.name,
                "event": "lid",
            },
        )
        return lid_pb2.LidResult(flow_id=flow_id, lang=answer.lang, score=answer.score, audio_ms=answer.audio_ms)


def _consume(future: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        future.result()
