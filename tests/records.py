"""Reading recordings back in tests: a GET that returns the status with the body, and the duration
of an archived object (FLAC or Ogg Opus), to compare with the audio the gateway accepted."""

from __future__ import annotations

import io
import urllib.error
import urllib.request

import soundfile as sf

from tests.poll import seconds


def fetch(url: str) -> tuple[int, bytes]:
    """(HTTP status, body), error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=seconds(10)) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def decoded_s(data: bytes) -> float:
    """Seconds of audio in an archived object."""
    info = sf.info(io.BytesIO(data))
    return float(info.frames / info.samplerate)
