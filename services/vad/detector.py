"""Builds sherpa-onnx's `VoiceActivityDetector` on the Silero model (SPEC §9) and probes it safely.

sherpa-onnx ends the whole process (exit 255) on a model it cannot use, so the probe runs in a child
process (`python -m services.vad.probe`) before the service loads the model itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.models import silero_vad_onnx
from services.vad.config import SAMPLE_RATE, VadConfig

# Margin of the detector's ring buffer beyond max_speech_s (sherpa-onnx keeps a segment's samples).
_BUFFER_MARGIN_S = 10.0


class SpeechDetector(Protocol):
    """The subset of sherpa_onnx.VoiceActivityDetector the core uses (sample indices in samples)."""

    def accept_waveform(self, samples: Any) -> None: ...
    def is_speech_detected(self) -> bool: ...
    def empty(self) -> bool: ...
    def pop(self) -> None: ...
    def flush(self) -> None: ...
    def reset(self) -> None: ...

    @property
    def current_segment(self) -> Any: ...

    @property
    def front(self) -> Any: ...


def model_path(config: VadConfig) -> Path:
    return Path(config.model_path) if config.model_path else silero_vad_onnx()


def make_detector(config: VadConfig) -> SpeechDetector:
    """A fresh detector (its own onnxruntime session, ~60 ms and ~10 MB, see docs/services/vad.md)."""
    import sherpa_onnx

    vc = sherpa_onnx.VadModelConfig()
    vc.silero_vad.model = str(model_path(config))
    vc.silero_vad.threshold = config.threshold
    vc.silero_vad.min_silence_duration = config.min_silence_ms / 1000
    vc.silero_vad.min_speech_duration = config.min_speech_ms / 1000
    vc.silero_vad.window_size = config.window_samples
    vc.silero_vad.max_speech_duration = config.max_speech_s
    vc.sample_rate = SAMPLE_RATE
    vc.num_threads = config.num_threads
    vc.provider = "cpu"
    det: SpeechDetector = sherpa_onnx.VoiceActivityDetector(
        vc, buffer_size_in_seconds=config.max_speech_s + _BUFFER_MARGIN_S
    )
    return det


class DetectorPool:
    """Detectors kept for the next flow. Building one costs ~60 ms of CPU and ~10 MB (its own
    onnxruntime session): at 16 live sessions of a few seconds each that was 40 % of the service's
    CPU, on the thread that the other flows' audio waits for (docs/services/vad.md). A detector given
    back is reset (model state, buffer, segments) and serves any later flow of the same config.
    At most `limit` idle detectors are kept; `take` and `give` are called from executor threads."""

    def __init__(self, make: Callable[[VadConfig], SpeechDetector], limit: int) -> None:
        self._make = make
        self._limit = limit
        self._idle: dict[VadConfig, list[SpeechDetector]] = {}
        self._lock = threading.Lock()
        self.built = 0  # detectors made, for tests and the service's log

    def take(self, config: VadConfig) -> SpeechDetector:
        with self._lock:
            idle = self._idle.get(config)
            if idle:
                return idle.pop()
            self.built += 1
        return self._make(config)

    def give(self, config: VadConfig, detector: SpeechDetector) -> None:
        """Return a detector no thread uses any more."""
        detector.reset()
        with self._lock:
            if self.idle < self._limit:
                self._idle.setdefault(config, []).append(detector)

    @property
    def idle(self) -> int:
        return sum(len(v) for v in self._idle.values())


def exercise(detector: SpeechDetector, config: VadConfig, seconds: float = 1.0) -> None:
    """Run `seconds` of a deterministic voiced-like signal through the model (warm-up, probe)."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    signal = 0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2
    signal = (signal + 0.01 * rng.standard_normal(n)).astype(np.float32)
    w = config.window_samples
    for i in range(0, n - w + 1, w):
        detector.accept_waveform(signal[i : i + w])
    detector.flush()
    while not detector.empty():
        detector.pop()


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


def probe_in_child(env: Mapping[str, str], timeout_s: float = 60.0) -> ProbeResult:
    """Load and exercise the model in `python -m services.vad.probe` with the same VAD_* env."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "services.vad.probe"],
            env=dict(env),
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"probe did not finish within {timeout_s:.0f} s")
    out = proc.stdout.decode(errors="replace").strip().splitlines()
    if proc.returncode == 0 and out and json.loads(out[-1]).get("ok") is True:
        return ProbeResult(True, out[-1])
    err = proc.stderr.decode(errors="replace").strip().splitlines()
    tail = " | ".join(err[-5:]) if err else "(no stderr)"
    return ProbeResult(False, f"probe exited with {proc.returncode}: {tail}")
