"""The early-answer policy of `Lid/Detect` without sockets or a model (SPEC §4, STYLE §1)."""

from __future__ import annotations

import pytest

from common.envconf import ConfigError, load_env
from services.lid.config import LidConfig
from services.lid.engine import LanguageDetector, restrict
from services.lid.policy import Answer, Detection, EarlyAnswerPolicy, InvalidFrame, RunDetection

pytestmark = pytest.mark.unit

CFG = LidConfig(first_n_s=3.0, min_s=1.0, step_ms=500, confidence=0.9)


def pcm_ms(ms: int) -> bytes:
    return b"\x01\x00" * (16 * ms)


def feed(policy: EarlyAnswerPolicy, ms: int, flow_id: str = "f1", last: bool = False) -> None:
    policy.add_frame(flow_id, 16000, 1, ms * 1_000_000, pcm_ms(ms), last)


def step(policy: EarlyAnswerPolicy) -> RunDetection | Answer | None:
    return policy.next_step()


def detection_for(run: RunDetection | Answer | None, lang: str, score: float) -> Detection:
    assert isinstance(run, RunDetection), f"expected a detection request, got {run!r}"
    return Detection(lang, score, run.samples)


def test_no_detection_before_min_seconds() -> None:
    policy = EarlyAnswerPolicy(CFG)
    for _ in range(49):  # 980 ms in 20 ms frames
        feed(policy, 20)
        assert step(policy) is None
    feed(policy, 20)
    run = step(policy)
    assert isinstance(run, RunDetection) and run.samples == 16000 and not run.final


def test_confident_detection_answers_early() -> None:
    policy = EarlyAnswerPolicy(CFG)
    feed(policy, 1000)
    run = step(policy)
    feed(policy, 200)  # audio keeps arriving while the detection runs
    assert step(policy) is None
    policy.on_detection(detection_for(run, "zh", 0.97))
    assert step(policy) == Answer("zh", 0.97, 1000, "confident")
    assert policy.answer is not None


def test_one_detection_in_flight_and_step_throttle() -> None:
    policy = EarlyAnswerPolicy(CFG)
    feed(policy, 1000)
    first = step(policy)
    feed(policy, 1000)  # plenty of new audio, but the first detection is still running
    assert step(policy) is None
    policy.on_detection(detection_for(first, "en", 0.5))
    second = step(policy)
    assert isinstance(second, RunDetection) and second.samples == 32000
    policy.on_detection(detection_for(second, "en", 0.6))
    feed(policy, 480)  # less than step_ms since the last detection
    assert step(policy) is None
    feed(policy, 20)
    third = step(policy)
    assert isinstance(third, RunDetection) and third.samples == 40000 and not third.final


def test_first_n_seconds_caps_audio_and_forces_the_answer() -> None:
    policy = EarlyAnswerPolicy(CFG)
    feed(policy, 5000)  # one big message, more than first_n_s
    assert policy.samples == 48000
    run = step(policy)
    assert isinstance(run, RunDetection) and run.final and run.samples == 48000
    policy.on_detection(detection_for(run, "fr", 0.4))
    assert step(policy) == Answer("fr", 0.4, 3000, "first_n_seconds")


def test_unconfident_detections_then_final_at_first_n_seconds() -> None:
    policy = EarlyAnswerPolicy(CFG)
    feed(policy, 1000)
    run = step(policy)
    feed(policy, 2000)  # reaches 3 s while the first detection runs
    policy.on_detection(detection_for(run, "pt", 0.5))
    final = step(policy)
    assert isinstance(final, RunDetection) and final.final and final.samples == 48000
    policy.on_detection(detection_for(final, "es", 0.7))
    assert step(policy) == Answer("es", 0.7, 3000, "first_n_seconds")


def test_half_close_with_short_audio_answers_on_it() -> None:
    policy = EarlyAnswerPolicy(CFG)
    feed(policy, 500)
    assert step(policy) is None
    policy.end_of_stream()
    run = step(policy)
    assert isinstance(run, RunDetection) and run.final and run.samples == 8000
    policy.on_detection(detection_for(run, "en", 0.3))
    assert step(policy) == Answer("en", 0.3, 500, "end_of_stream")


def test_last_flag_ends_the_stream() -> None:
    policy = EarlyAnswerPolicy(CFG)
    feed(policy, 300, last=True)
    assert policy.ended
    run = step(policy)
    assert isinstance(run, RunDetection) and run.final
    with pytest.raises(InvalidFrame, match="after the end"):
        feed(policy, 20)


def test_end_while_detecting_all_audio_uses_that_detection() -> None:
    policy = EarlyAnswerPolicy(CFG)
    feed(policy, 1200)
    run = step(policy)
    policy.end_of_stream()
    assert step(policy) is None  # no second detection over the same audio
    policy.on_detection(detection_for(run, "ja", 0.6))
    assert step(policy) == Answer("ja", 0.6, 1200, "end_of_stream")


def test_end_while_detecting_less_audio_runs_a_final_detection() -> None:
    policy = EarlyAnswerPolicy(CFG)
    feed(policy, 1000)
    run = step(policy)
    feed(policy, 300)
    policy.end_of_stream()
    policy.on_detection(detection_for(run, "ja", 0.6))
    final = step(policy)
    assert isinstance(final, RunDetection) and final.final and final.samples == 20800


def test_no_audio_answers_empty() -> None:
    policy = EarlyAnswerPolicy(CFG)
    policy.end_of_stream()
    assert step(policy) == Answer("", 0.0, 0, "no_audio")


def test_min_seconds_below_step_starts_at_min() -> None:
    policy = EarlyAnswerPolicy(LidConfig(min_s=0.2, step_ms=500))
    feed(policy, 200)
    assert isinstance(step(policy), RunDetection)


def test_detection_without_request_is_a_bug() -> None:
    policy = EarlyAnswerPolicy(CFG)
    with pytest.raises(RuntimeError):
        policy.on_detection(Detection("en", 0.9, 16000))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sr": 8000}, "sr=8000"),
        ({"channels": 2}, "channels=2"),
        ({"pcm": b"\x00\x00\x00"}, "3 bytes"),
        ({"ns": 1}, "ns=1"),
        ({"flow_id": "other"}, "flow_id changed"),
    ],
)
def test_invalid_frames(kwargs: dict[str, object], match: str) -> None:
    policy = EarlyAnswerPolicy(CFG)
    feed(policy, 20)
    frame: dict[str, object] = {
        "flow_id": "f1",
        "sr": 16000,
        "channels": 1,
        "ns": 0,
        "pcm": pcm_ms(20),
        "last": False,
    }
    frame.update(kwargs)
    with pytest.raises(InvalidFrame, match=match):
        policy.add_frame(**frame)  # type: ignore[arg-type]


def test_ns_zero_is_accepted() -> None:
    policy = EarlyAnswerPolicy(CFG)
    policy.add_frame("f1", 16000, 1, 0, pcm_ms(40), False)
    assert policy.samples == 640 and policy.flow_id == "f1"


def test_restrict_renormalises_over_candidates() -> None:
    probs = [("en", 0.5), ("de", 0.3), ("zh", 0.15), ("fr", 0.05)]
    assert restrict(probs, ()) == probs
    out = restrict(probs, ("zh", "fr"))
    assert [lang for lang, _ in out] == ["zh", "fr"]
    assert out[0][1] == pytest.approx(0.75) and out[1][1] == pytest.approx(0.25)


class FakeLidEngine:
    """Scripted probabilities, implementing the LidEngine protocol."""

    name = "fake"

    def __init__(self, probs: list[tuple[str, float]]) -> None:
        self.probs = probs
        self.calls: list[int] = []

    def probabilities(self, pcm: bytes) -> list[tuple[str, float]]:
        self.calls.append(len(pcm) // 2)
        return self.probs


def test_detector_applies_candidate_languages() -> None:
    engine = FakeLidEngine([("de", 0.6), ("en", 0.3), ("zh", 0.1)])
    detector = LanguageDetector(engine, ("en", "zh"))
    det = detector.detect(RunDetection(pcm_ms(1000), final=False))
    assert det == Detection("en", pytest.approx(0.75), 16000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ko"):
        LanguageDetector(engine, ("en", "ko")).check_langs()


def test_config_from_env() -> None:
    cfg = load_env(
        LidConfig,
        {
            "LID_FIRST_N_SECONDS": "2.5",
            "LID_MIN_SECONDS": "0.5",
            "LID_CONFIDENCE": "0.8",
            "LID_LANGS": "EN, zh",
            "LID_MAX_SESSIONS": "4",
        },
    )
    assert (cfg.first_n_s, cfg.min_s, cfg.confidence, cfg.langs, cfg.max_sessions) == (
        2.5,
        0.5,
        0.8,
        ("en", "zh"),
        4,
    )
    assert cfg.max_samples == 40000 and cfg.min_samples == 8000
    assert load_env(LidConfig, {}) == LidConfig()


@pytest.mark.parametrize(
    "env",
    [
        {"LID_MIN_SECONDS": "4"},
        {"LID_MIN_SECONDS": "0"},
        {"LID_CONFIDENCE": "1.5"},
        {"LID_WINDOW_S": "31"},
        {"LID_LANGS": "en,xx"},
        {"LID_MAX_SESSIONS": "0"},
        {"LID_STEP_MS": "soon"},
    ],
)
def test_config_rejects(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_env(LidConfig, env)
