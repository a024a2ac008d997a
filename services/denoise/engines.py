"""Denoise engines (SPEC §4 "NR algorithm switchable"). Each is a blocking, per-stream object run in an
executor: float32 samples in [-1, 1] at 16 kHz in, denoised samples out.

Engine output convention: the output stream, after dropping its first `delay_samples`, is sample-aligned
with the input (output sample n is input sample n denoised). `flush()` drains what the engine holds back
and leaves it ready for a new stream."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from common.audio import SAMPLE_RATE

ENGINES = ("gtcrn", "rnnoise")


class EngineUnavailable(RuntimeError):
    """The engine's model or library cannot be used on this machine."""


class Engine(Protocol):
    name: str
    delay_samples: int

    def process(self, samples: np.ndarray) -> np.ndarray: ...

    def flush(self) -> np.ndarray: ...


_EMPTY = np.zeros(0, dtype=np.float32)


class GtcrnEngine:
    """GTCRN through sherpa-onnx's OnlineSpeechDenoiser (STFT 512 / hop 256, output already aligned)."""

    name = "gtcrn"
    delay_samples = 0

    def __init__(self, model: Path, num_threads: int = 1) -> None:
        import sherpa_onnx

        config = sherpa_onnx.OnlineSpeechDenoiserConfig(
            model=sherpa_onnx.OfflineSpeechDenoiserModelConfig(
                gtcrn=sherpa_onnx.OfflineSpeechDenoiserGtcrnModelConfig(model=str(model)),
                num_threads=num_threads,
            )
        )
        if not config.validate():
            raise EngineUnavailable(f"sherpa-onnx rejects the GTCRN config for {model}")
        self._denoiser = sherpa_onnx.OnlineSpeechDenoiser(config)

    def process(self, samples: np.ndarray) -> np.ndarray:
        if samples.size == 0:
            return _EMPTY
        out = self._denoiser.run(samples, SAMPLE_RATE)
        return np.asarray(out.samples, dtype=np.float32)

    def flush(self) -> np.ndarray:
        out = np.asarray(self._denoiser.flush().samples, dtype=np.float32)
        self._denoiser.reset()
        return out


class RnnoiseEngine:
    """RNNoise (pyrnnoise's library, 48 kHz core, 480-sample frames) between two streaming soxr
    resamplers 16k->48k->16k. soxr output is aligned (it holds samples back instead of delaying them);
    the RNNoise core delays by 960 samples at 48 kHz = 320 at 16 kHz (measured, see the docs)."""

    name = "rnnoise"
    delay_samples = 320
    _CORE_RATE = 48_000
    _CORE_FRAME = 480
    _CORE_DELAY = 960
    _SCALE = 32768.0  # RNNoise works on int16-scaled floats

    def __init__(self, resample_quality: str = "LQ") -> None:
        import soxr
        from pyrnnoise import rnnoise

        self._soxr = soxr
        self._lib = rnnoise.lib
        self._create = rnnoise.create
        self._destroy = rnnoise.destroy
        if rnnoise.FRAME_SIZE != self._CORE_FRAME:
            raise EngineUnavailable(f"unexpected RNNoise frame size {rnnoise.FRAME_SIZE}")
        self._quality = resample_quality
        self._state: int | None = None
        self._reset()

    def _reset(self) -> None:
        if self._state is not None:
            self._destroy(self._state)
        self._state = self._create()
        self._up = self._soxr.ResampleStream(SAMPLE_RATE, self._CORE_RATE, 1, dtype="float32", quality=self._quality)
        self._down = self._soxr.ResampleStream(self._CORE_RATE, SAMPLE_RATE, 1, dtype="float32", quality=self._quality)
        self._pending = _EMPTY

    def __del__(self) -> None:
        if getattr(self, "_state", None) is not None:
            self._destroy(self._state)
            self._state = None

    def _core(self, samples48: np.ndarray) -> np.ndarray:
        """Run every whole 480-sample frame of pending + samples48; keep the rest pending."""
        buf = np.concatenate((self._pending, samples48)) if self._pending.size else samples48
        whole = (buf.size // self._CORE_FRAME) * self._CORE_FRAME
        self._pending = buf[whole:].copy()
        if whole == 0:
            return _EMPTY
        work = np.clip(buf[:whole] * self._SCALE, -self._SCALE, self._SCALE - 1).astype(np.float32)
        ptr_type = ctypes.POINTER(ctypes.c_float)
        for start in range(0, whole, self._CORE_FRAME):
            frame = work[start : start + self._CORE_FRAME]  # contiguous view, processed in place
            ptr = frame.ctypes.data_as(ptr_type)
            self._lib.rnnoise_process_frame(self._state, ptr, ptr)
        return work / self._SCALE

    def process(self, samples: np.ndarray) -> np.ndarray:
        if samples.size == 0:
            return _EMPTY
        up = self._up.resample_chunk(samples.astype(np.float32, copy=False))
        return self._down.resample_chunk(self._core(up))

    def flush(self) -> np.ndarray:
        tail = self._up.resample_chunk(_EMPTY, last=True)
        # Zero padding to a whole frame, then the core delay, pushes the last real samples out.
        need = (-(self._pending.size + tail.size)) % self._CORE_FRAME + self._CORE_DELAY
        core = self._core(np.concatenate((tail, np.zeros(need, dtype=np.float32))))
        out = self._down.resample_chunk(core, last=True)
        self._reset()
        return out


def make_engine(name: str, gtcrn_model: Path | None, num_threads: int = 1, rnnoise_quality: str = "LQ") -> Engine:
    """Build one engine instance by its DENOISE_ENGINE name."""
    if name == "gtcrn":
        if gtcrn_model is None:
            raise EngineUnavailable("gtcrn needs a prepared model path")
        return GtcrnEngine(gtcrn_model, num_threads)
    if name == "rnnoise":
        return RnnoiseEngine(rnnoise_quality)
    raise EngineUnavailable(f"unknown denoise engine {name!r}; expected one of {ENGINES}")


def probe_gtcrn(model: Path, timeout_s: float = 30.0) -> None:
    """Load and run the model in a child process: sherpa-onnx exits the process (255) on a model it
    cannot use (SPEC §9), so the service must not be the one to find out. Blocking."""
    cmd = [sys.executable, "-m", "services.denoise.probe", str(model)]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise EngineUnavailable(f"gtcrn probe of {model} timed out after {timeout_s:.0f} s") from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()[-400:]
        raise EngineUnavailable(f"gtcrn probe of {model} exited {done.returncode}: {err}")
