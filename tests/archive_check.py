"""Did the archive keep every second the gateway accepted? The stored object of a `record_url`,
decoded, must last what the session's `end.audio_s` says, within one 20 ms frame (a test helper for
the chaos tests)."""

from __future__ import annotations

from typing import Any

from tests.records import decoded_s, fetch

__all__ = ["FRAME_S", "assert_archived_whole", "decoded_s", "fetch", "missing_s"]
FRAME_S = 0.02


def missing_s(stored_s: float, accepted_s: float) -> float:
    """How much accepted audio the archive lacks (0 within one frame of rounding)."""
    gap = accepted_s - stored_s
    return 0.0 if abs(gap) <= FRAME_S else gap


def assert_archived_whole(events: list[dict[str, Any]]) -> float:
    """The session's `record_url`, fetched and decoded, holds all of `end.audio_s`; returns that duration."""
    end = events[-1]
    assert end["type"] == "end", f"no end: {events[-3:]}"
    (record,) = [e for e in events if e["type"] == "record_url"]
    status, data = fetch(record["url"])
    assert status == 200, f"record_url answered {status}"
    stored = decoded_s(data)
    assert missing_s(stored, end["audio_s"]) == 0.0, f"stored {stored:.3f} s, accepted {end['audio_s']} s"
    return stored
