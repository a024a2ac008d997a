"""The early-answer policy of `Lid/Detect` and its speech gate without sockets or models (SPEC §4, STYLE §1)."""

from __future__ import annotations

import pytest

from common.envconf import ConfigError, load_env
from services.lid.config import LidConfig
from services.lid.engine import LanguageDetector, restrict
from services.lid.policy import Answer, Detection, EarlyAnswerPolicy, InvalidFrame, RunDetection
from services.lid.speech import WINDOW_SAMPLES, SpeechGate

pytestmark = pytest.mark.unit

# No pads and one-window runs, so that speech counts are whole windows; the gate has its own tests.
CFG = LidConfig(first_n_s=3.0, min_s=1.0, step_ms=500, confidence=0.9, min_score=0.5, min_speech_ms=0, speech_pad_ms=0)
W = WINDOW_SAMPLES
LOUD, QUIET = b"\x10\x27", b"\x01\x00"  # samples of 10000 and 1


class FakeSpeechProbability:
    """Implements SpeechProbability: a window is speech (0.95) when its first sample is loud, else 0.02."""

    def __init__(self) -> None:
        self.windows = 0

    def __call__(self, pcm: bytes) -> list[float]:
        assert len(pcm) % (2 * W) == 0, "the policy feeds whole windows only"
        starts = [pcm[i : i + 2] for i in range(0, len(pcm), 2 * W)]
        self.windows += len(starts)
        return [0.95 if s == LOUD else 0.02 for s in starts]


def new_policy(cfg: LidConfig = CFG) -> EarlyAnswerPolicy:
    return EarlyAnswerPolicy(cfg, FakeSpeechProbability())


def audio(windows: int, speech: bool) -> bytes:
    return (LOUD if speech else QUIET) * (W * windows)


def feed(policy: EarlyAnswerPolicy, pcm: bytes, flow_id: str = "f1", last: bool = False) -> None:
    policy.add_frame(flow_id, 16000, 1, len(pcm) // 2 * 62_500, pcm, last)


def speech(policy: EarlyAnswerPolicy, windows: int, last: bool = False) -> None:
    feed(policy, audio(windows, True), last=last)


def silence(policy: EarlyAnswerPolicy, windows: int, last: bool = False) -> None:
    feed(policy, audio(windows, False), last=last)


def step(policy: EarlyAnswerPolicy) -> RunDetection | Answer | None:
    return policy.next_step()


def detection_for(run: RunDetection | Answer | None, lang: str, score: float) -> Detection:
    assert isinstance(run, RunDetection), f"expected a detection request, got {run!r}"
    return Detection(lang, score, run.samples)


MIN_WINDOWS = -(-16000 // W)  # 32 windows: the first whole-window count >= LID_MIN_SECONDS
FIRST_N = 48000  # samples of LID_FIRST_N_SECONDS


def test_no_detection_before_min_seconds_of_speech() -> None:
    policy = new_policy()
    silence(policy, 200)  # 6.4 s of non-speech: nothing to detect, however long
    assert step(policy) is None and policy.samples == 0
    for _ in range(MIN_WINDOWS - 1):
        speech(policy, 1)
        assert step(policy) is None
    speech(policy, 1)
    run = step(policy)
    assert isinstance(run, RunDetection) and run.samples == MIN_WINDOWS * W and not run.final
    assert run.pcm == audio(MIN_WINDOWS, True)  # the speech only, none of the silence before it
    assert policy.first_speech_sample == 200 * W


def test_speech_split_across_messages_is_classified_in_whole_windows() -> None:
    policy = new_policy()
    pcm = audio(3, False) + audio(MIN_WINDOWS, True)
    for i in range(0, len(pcm), 640):  # 20 ms messages, not aligned to 32 ms windows
        feed(policy, pcm[i : i + 640])
    run = step(policy)
    assert isinstance(run, RunDetection) and run.pcm == audio(MIN_WINDOWS, True)


def test_confident_detection_answers_early() -> None:
    policy = new_policy()
    silence(policy, 60)
    speech(policy, MIN_WINDOWS)
    run = step(policy)
    speech(policy, 6)  # speech keeps arriving while the detection runs
    assert step(policy) is None
    policy.on_detection(detection_for(run, "zh", 0.97))
    assert step(policy) == Answer("zh", 0.97, MIN_WINDOWS * W // 16, "confident")
    assert policy.answer is not None


def test_one_detection_in_flight_and_step_throttle() -> None:
    policy = new_policy()
    speech(policy, MIN_WINDOWS)
    first = step(policy)
    speech(policy, 32)  # plenty of new speech, but the first detection is still running
    assert step(policy) is None
    policy.on_detection(detection_for(first, "en", 0.5))
    second = step(policy)
    assert isinstance(second, RunDetection) and second.samples == 64 * W
    policy.on_detection(detection_for(second, "en", 0.6))
    speech(policy, 15)  # 480 ms: less than step_ms since the last detection
    assert step(policy) is None
    silence(policy, 5)  # non-speech adds nothing
    assert step(policy) is None
    speech(policy, 1)
    third = step(policy)
    assert isinstance(third, RunDetection) and third.samples == 80 * W and not third.final


def test_first_n_seconds_count_speech_from_the_first_speech() -> None:
    policy = new_policy()
    silence(policy, 150)  # 4.8 s of lead-in: more than first_n_s, still no answer
    assert step(policy) is None
    speech(policy, 200)  # one big message, more speech than first_n_s
    assert policy.samples == FIRST_N
    run = step(policy)
    assert isinstance(run, RunDetection) and run.final and run.samples == FIRST_N
    policy.on_detection(detection_for(run, "fr", 0.6))
    assert step(policy) == Answer("fr", 0.6, 3000, "first_n_seconds")


def test_unconfident_detections_then_final_at_first_n_seconds() -> None:
    policy = new_policy()
    speech(policy, MIN_WINDOWS)
    run = step(policy)
    speech(policy, 70)  # reaches 3 s while the first detection runs
    policy.on_detection(detection_for(run, "pt", 0.5))
    final = step(policy)
    assert isinstance(final, RunDetection) and final.final and final.samples == FIRST_N
    policy.on_detection(detection_for(final, "es", 0.7))
    assert step(policy) == Answer("es", 0.7, 3000, "first_n_seconds")


def test_below_the_floor_answers_und_with_its_score() -> None:
    policy = new_policy()
    speech(policy, 100)
    run = step(policy)
    policy.on_detection(detection_for(run, "cy", 0.37))
    assert step(policy) == Answer("und", 0.37, 3000, "first_n_seconds")


def test_a_pause_after_speech_answers_first_n_seconds_after_the_first_speech() -> None:
    policy = new_policy()
    silence(policy, 30)
    speech(policy, 40)  # 1.28 s of speech, then the speaker pauses
    run = step(policy)
    assert isinstance(run, RunDetection) and not run.final
    policy.on_detection(detection_for(run, "de", 0.8))
    silence(policy, 53)  # 93 windows since the first speech: < 3 s
    assert step(policy) is None
    silence(policy, 1)  # 94 windows = 3.008 s since the first speech
    # The detection over all the speech there is answers, without running it again.
    assert step(policy) == Answer("de", 0.8, 40 * W // 16, "first_n_seconds")


def test_no_speech_at_all_answers_und_without_any_detection() -> None:
    policy = new_policy()
    for _ in range(20):
        silence(policy, 10)
        assert step(policy) is None
    silence(policy, 10, last=True)
    assert step(policy) == Answer("und", 0.0, 0, "no_speech")


def test_half_close_with_short_speech_answers_on_it() -> None:
    policy = new_policy()
    silence(policy, 20)
    speech(policy, 16)
    assert step(policy) is None
    policy.end_of_stream()
    run = step(policy)
    assert isinstance(run, RunDetection) and run.final and run.samples == 16 * W
    policy.on_detection(detection_for(run, "en", 0.3))
    assert step(policy) == Answer("und", 0.3, 16 * W // 16, "end_of_stream")


def test_last_flag_ends_the_stream() -> None:
    policy = new_policy()
    speech(policy, 10, last=True)
    assert policy.ended
    run = step(policy)
    assert isinstance(run, RunDetection) and run.final
    with pytest.raises(InvalidFrame, match="after the end"):
        speech(policy, 1)


def test_end_while_detecting_all_speech_uses_that_detection() -> None:
    policy = new_policy()
    speech(policy, 40)
    run = step(policy)
    policy.end_of_stream()
    assert step(policy) is None  # no second detection over the same audio
    policy.on_detection(detection_for(run, "ja", 0.6))
    assert step(policy) == Answer("ja", 0.6, 40 * W // 16, "end_of_stream")


def test_end_while_detecting_less_speech_runs_a_final_detection() -> None:
    policy = new_policy()
    speech(policy, MIN_WINDOWS)
    run = step(policy)
    speech(policy, 8)
    policy.end_of_stream()
    policy.on_detection(detection_for(run, "ja", 0.6))
    final = step(policy)
    assert isinstance(final, RunDetection) and final.final and final.samples == (MIN_WINDOWS + 8) * W


def test_no_audio_answers_empty() -> None:
    policy = new_policy()
    policy.end_of_stream()
    assert step(policy) == Answer("", 0.0, 0, "no_audio")


def test_min_seconds_below_step_starts_at_min() -> None:
    policy = new_policy(LidConfig(min_s=0.2, step_ms=500, min_speech_ms=0, speech_pad_ms=0))
    speech(policy, 7)  # 224 ms
    assert isinstance(step(policy), RunDetection)


def test_detection_without_request_is_a_bug() -> None:
    policy = new_policy()
    with pytest.raises(RuntimeError):
        policy.on_detection(Detection("en", 0.9, 16000))


def test_vad_stops_once_the_speech_is_in() -> None:
    vad = FakeSpeechProbability()
    policy = EarlyAnswerPolicy(CFG, vad)
    speech(policy, 100)  # more than first_n_s
    seen = vad.windows
    speech(policy, 50)  # nothing more to listen for
    assert vad.windows == seen


def gate(min_windows: int = 3, pad: int = 2, max_samples: int = 100 * W) -> SpeechGate:
    return SpeechGate(0.5, min_windows, pad, max_samples)


def push(g: SpeechGate, probs: list[float]) -> None:
    for i, p in enumerate(probs):
        g.push(bytes([len(g.speech) % 251, i % 251]) * W, p)


def test_gate_keeps_speech_with_pads_and_drops_the_rest() -> None:
    g = gate()
    push(g, [0.1] * 10 + [0.9] * 5 + [0.1] * 10 + [0.9] * 4 + [0.1] * 3)
    # Each run of 5 and 4 windows, 2 windows of pad before and after: 9 + 8.
    assert g.speech_samples == 17 * W
    assert g.first_speech == 10 * W and g.position == 32 * W


def test_gate_drops_runs_shorter_than_min_speech() -> None:
    g = gate(min_windows=3)
    push(g, [0.1, 0.9, 0.9, 0.1] * 20)  # clicks of 2 windows
    assert g.speech_samples == 0 and g.first_speech is None and g.since_first_speech == 0


def test_gate_hysteresis_stays_in_speech_down_to_threshold_minus_015() -> None:
    g = gate(min_windows=1, pad=0)
    push(g, [0.6, 0.4, 0.36, 0.34, 0.4])  # 0.4 continues speech; after 0.34 it must start at 0.5 again
    assert g.speech_samples == 3 * W


def test_gate_caps_kept_speech() -> None:
    g = gate(min_windows=1, pad=0, max_samples=5 * W + 100)
    push(g, [0.9] * 10)
    assert g.speech_samples == 5 * W + 100 and g.since_first_speech == 10 * W


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
    policy = new_policy()
    silence(policy, 1)
    frame: dict[str, object] = {
        "flow_id": "f1",
        "sr": 16000,
        "channels": 1,
        "ns": 0,
        "pcm": audio(1, False),
        "last": False,
    }
    frame.update(kwargs)
    with pytest.raises(InvalidFrame, match=match):
        policy.add_frame(**frame)  # type: ignore[arg-type]


def test_ns_zero_is_accepted() -> None:
    policy = new_policy()
    policy.add_frame("f1", 16000, 1, 0, audio(2, True), False)
    assert policy.samples == 2 * W and policy.flow_id == "f1"


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
    det = detector.detect(RunDetection(b"\x01\x00" * 16000, final=False))
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
            "LID_MIN_SCORE": "0.6",
            "LID_VAD_THRESHOLD": "0.4",
            "LID_MIN_SPEECH_MS": "100",
            "LID_SPEECH_PAD_MS": "64",
        },
    )
    assert (cfg.first_n_s, cfg.min_s, cfg.confidence, cfg.langs, cfg.max_sessions) == (
        2.5,
        0.5,
        0.8,
        ("en", "zh"),
        4,
    )
    assert (cfg.min_score, cfg.vad_threshold, cfg.min_speech_windows, cfg.pad_windows) == (0.6, 0.4, 4, 2)
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
        {"LID_MIN_SCORE": "0.95"},  # above LID_CONFIDENCE
        {"LID_MIN_SCORE": "-0.1"},
        {"LID_VAD_THRESHOLD": "1"},
        {"LID_SPEECH_PAD_MS": "-1"},
    ],
)
def test_config_rejects(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_env(LidConfig, env)
