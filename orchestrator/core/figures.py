"""Per-session figures for the `metrics` event, and the partial throttle (SPEC §2). No I/O."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.events import Transcript


@dataclass
class SessionFigures:
    bytes_in: int = 0
    messages_in: int = 0
    speech_s: float = 0.0
    segments: int = 0
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    _speech_open_at: float | None = None

    def on_audio(self, n_bytes: int) -> None:
        self.bytes_in += n_bytes
        self.messages_in += 1

    def on_boundary(self, kind: str, ts: float) -> None:
        if kind == "start":
            self._speech_open_at = ts
        elif self._speech_open_at is not None:
            self.speech_s += max(0.0, ts - self._speech_open_at)
            self.segments += 1
            self._speech_open_at = None

    def on_latency(self, stage: str, ms: float) -> None:
        self.latencies_ms.setdefault(stage, []).append(ms)

    def to_event(self, flow_id: str | None, audio_s: float) -> dict[str, Any]:
        stages = {
            stage: {
                "count": len(values),
                "latency_ms_p50": round(statistics.median(values), 2),
                "latency_ms_max": round(max(values), 2),
            }
            for stage, values in sorted(self.latencies_ms.items())
        }
        return {
            "type": "metrics",
            "flowId": flow_id,
            "audio_s": round(audio_s, 3),
            "bytes_in": self.bytes_in,
            "messages_in": self.messages_in,
            "speech_s": round(self.speech_s, 3),
            "speech_segments": self.segments,
            "stages": stages,
        }


class PartialThrottle:
    """At most one `asr_partial` per interval (PARTIAL_INTERVAL_MS): one that comes too soon is
    held, a newer one replaces it, a final drops it."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last_at: float | None = None
        self._held: Transcript | None = None

    def offer(self, partial: Transcript, now: float) -> Transcript | None:
        """The partial to send now, or None if it is held."""
        if self._last_at is None or now - self._last_at >= self._interval_s:
            return self._sent(partial, now)
        self._held = partial
        return None

    @property
    def due_at(self) -> float | None:
        """When the held partial may go out, if one is held."""
        if self._held is None or self._last_at is None:
            return None
        return self._last_at + self._interval_s

    def release(self, now: float) -> Transcript | None:
        """The held partial, if its time has come."""
        due = self.due_at
        if self._held is None or due is None or now < due:
            return None
        return self._sent(self._held, now)

    def drop(self) -> None:
        self._held = None

    def _sent(self, partial: Transcript, now: float) -> Transcript:
        self._held, self._last_at = None, now
        return partial
