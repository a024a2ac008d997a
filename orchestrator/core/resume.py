"""Resume by flowId (docs/protocol.md#resume): the numbered event log of one session. No I/O.

Every event a session sends gets `seq` 1, 2, 3 ... The log keeps the last `capacity` of them, so a
client that lost its connection and comes back with the last `seq` it received gets exactly the
events after it, once each, in order. A client cannot tell the gateway which events arrived while
it is connected, so the log holds the newest events rather than the unacknowledged ones: its bound
(`RESUME_BUFFER_EVENTS`) must cover the events in flight when a connection drops plus those made
while the client is away (few: no new audio arrives then).
"""

from __future__ import annotations

from collections import deque
from typing import Any


class EventLog:
    """Numbers a session's events and keeps the newest `capacity` of them (0: numbers only)."""

    def __init__(self, capacity: int) -> None:
        self.last_seq = 0
        self._kept: deque[dict[str, Any]] = deque(maxlen=max(0, capacity))

    def number(self, event: dict[str, Any]) -> dict[str, Any]:
        """Give `event` the next `seq` and keep it."""
        self.last_seq += 1
        event["seq"] = self.last_seq
        if self._kept.maxlen:
            self._kept.append(event)
        return event

    def after(self, seq: int) -> tuple[list[dict[str, Any]], int]:
        """The kept events after `seq`, oldest first, and how many events after `seq` are no longer
        kept (they fell out of the bound before the client came back)."""
        newer: list[dict[str, Any]] = []
        for event in reversed(self._kept):
            if event["seq"] <= seq:
                break
            newer.append(event)
        newer.reverse()
        first = newer[0]["seq"] if newer else self.last_seq + 1
        return newer, max(0, first - seq - 1)
