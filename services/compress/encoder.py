"""Encodes PCM16 into the archive format with libsndfile (soundfile) as the audio arrives, so the end of a
long flow only flushes the last page. Blocking: call from an executor, one thread at a time per encoder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from services.compress.session import CODECS

# libsndfile container/subtype per COMPRESS_FORMAT.
_SF_FORMATS = {"ogg_opus": ("OGG", "OPUS"), "flac": ("FLAC", "PCM_16")}
BLOCK_SAMPLES = 16000


@dataclass(frozen=True)
class Encoded:
    path: Path
    bytes: int
    duration_s: float
    codec: str


class StreamEncoder:
    """An archive file being written: `write` PCM16 LE mono chunks, then `close` (or `abort`)."""

    def __init__(self, out_path: Path, fmt: str, sample_rate_hz: int, compression_level: float | None = None) -> None:
        container, subtype = _SF_FORMATS[fmt]
        self.path = out_path
        self.fmt = fmt
        self.sample_rate_hz = sample_rate_hz
        self.samples = 0
        self._file = sf.SoundFile(
            out_path,
            "w",
            samplerate=sample_rate_hz,
            channels=1,
            format=container,
            subtype=subtype,
            compression_level=compression_level,
        )

    def write(self, pcm: bytes) -> None:
        block = np.frombuffer(pcm, dtype="<i2")
        self._file.write(block)
        self.samples += len(block)

    def close(self) -> Encoded:
        """Finish the stream and fsync the file: the archive is complete on disk."""
        self._file.close()
        with self.path.open("rb+") as f:
            os.fsync(f.fileno())
        return Encoded(self.path, self.path.stat().st_size, self.samples / self.sample_rate_hz, CODECS[self.fmt])

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def encode_pcm_file(
    pcm_path: Path, out_path: Path, fmt: str, sample_rate_hz: int, compression_level: float | None = None
) -> Encoded:
    """Encode a whole raw PCM16 LE mono file, block by block (bounded memory)."""
    enc = StreamEncoder(out_path, fmt, sample_rate_hz, compression_level)
    with pcm_path.open("rb") as f:
        for chunk in iter(lambda: f.read(2 * BLOCK_SAMPLES), b""):
            enc.write(chunk)
    return enc.close()


SALVAGE_BLOCK_SAMPLES = 1024  # a failed read loses at most this much of the cut end


def salvage_archive(
    part: Path, out_path: Path, fmt: str, sample_rate_hz: int, compression_level: float | None = None
) -> Encoded | None:
    """Re-encode what decodes of an archive a killed process left unfinished (`.part`: its stream never
    closed, its last frames may be cut) into a complete archive at `out_path`. None when nothing in it
    decodes at `sample_rate_hz`. Blocking."""
    enc: StreamEncoder | None = None
    try:
        with sf.SoundFile(part) as src:
            if src.samplerate != sample_rate_hz:
                return None
            while True:
                try:
                    block = src.read(SALVAGE_BLOCK_SAMPLES, dtype="int16", always_2d=True)[:, 0]
                except (sf.LibsndfileError, RuntimeError):
                    break  # the cut end: keep what came before it
                if not len(block):
                    break
                if enc is None:
                    enc = StreamEncoder(out_path, fmt, sample_rate_hz, compression_level)
                enc.write(block.astype("<i2").tobytes())
    except (sf.LibsndfileError, RuntimeError):
        pass  # not even a header: nothing to keep
    return None if enc is None else enc.close()


def audio_duration_s(path: Path) -> float:
    """Duration of an encoded archive as its decoder reports it."""
    info = sf.info(str(path))
    return info.frames / info.samplerate
