"""The one audio format of every internal link (SPEC §1, §3): PCM16 LE, 16 kHz, mono.

Defined once here; every process imports these instead of spelling 16000 or 2 again.
"""

from __future__ import annotations

SAMPLE_RATE = 16_000
CHANNELS = 1
BYTES_PER_SAMPLE = 2  # PCM16 little-endian
NS_PER_S = 1_000_000_000
NS_PER_SAMPLE = NS_PER_S // SAMPLE_RATE  # 62_500 ns: every whole-sample duration is exact
BYTES_PER_S = SAMPLE_RATE * BYTES_PER_SAMPLE


def bytes_for_ms(ms: float) -> int:
    """PCM bytes holding `ms` milliseconds of audio (whole samples)."""
    return int(SAMPLE_RATE * ms / 1000) * BYTES_PER_SAMPLE
