"""The gateway's one audio format (PCM16 LE, 16 kHz, mono) and decoding files into it.

`load_audio` reads what libsndfile reads (WAV, FLAC, OGG/Vorbis and Opus, MP3 with libsndfile
1.1+) in process, and anything else through `ffmpeg` (the audio track of a video, AAC, WMA...).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import numpy as np

__all__ = [
    "BYTES_PER_S",
    "SAMPLE_RATE",
    "DecodeError",
    "audio_seconds",
    "decode_with_ffmpeg",
    "load_audio",
    "load_audio_async",
]

SAMPLE_RATE = 16_000  # the gateway accepts nothing else (docs/protocol.md)
BYTES_PER_S = SAMPLE_RATE * 2
FFMPEG_TIMEOUT_S = 600.0


class DecodeError(Exception):
    """The file could not be read as audio (neither libsndfile nor ffmpeg could decode it)."""


def audio_seconds(pcm: bytes | int) -> float:
    """Seconds of PCM16 / 16 kHz / mono audio in `pcm` (bytes, or a byte count)."""
    return (pcm if isinstance(pcm, int) else len(pcm)) / BYTES_PER_S


def to_pcm16(samples: np.ndarray, rate: int) -> bytes:
    """Float samples (frames x channels, or mono) at `rate` as PCM16 LE mono 16 kHz."""
    import soxr

    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    pcm: bytes = (np.clip(mono, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    return pcm


def _load_with_soundfile(path: Path) -> bytes | None:
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None  # not a format libsndfile knows: ffmpeg's turn
    return to_pcm16(data, int(rate))


def ffmpeg_command(path: Path) -> list[str]:
    """ffmpeg decoding the first audio stream of `path` (video ignored) to PCM16 / 16 kHz / mono on stdout."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise DecodeError(f"{path}: not a format libsndfile reads, and ffmpeg is not installed")
    head = [exe, "-nostdin", "-hide_banner", "-v", "error", "-i", str(path)]
    return [*head, "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "pipe:1"]


def decode_with_ffmpeg(path: Path) -> bytes:
    try:
        done = subprocess.run(ffmpeg_command(path), capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise DecodeError(f"{path}: ffmpeg took longer than {FFMPEG_TIMEOUT_S:.0f} s") from e
    if done.returncode != 0:
        reason = _ffmpeg_reason(done.stderr).removeprefix(f"{path}: ")
        raise DecodeError(f"{path}: {reason}")
    return done.stdout[: len(done.stdout) // 2 * 2]


def _ffmpeg_reason(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "ffmpeg could not decode it"


def load_audio(path: str | Path) -> bytes:
    """The audio of `path` as PCM16 LE mono 16 kHz; raises DecodeError when nothing can read it."""
    p = Path(path)
    if not p.is_file():
        raise DecodeError(f"{p}: no such file")
    pcm = _load_with_soundfile(p)
    if pcm is None:
        pcm = decode_with_ffmpeg(p)
    if not pcm:
        raise DecodeError(f"{p}: no audio in it")
    return pcm


async def load_audio_async(path: str | Path) -> bytes:
    """`load_audio` off the event loop (decoding and resampling are CPU work)."""
    return await asyncio.to_thread(load_audio, path)
