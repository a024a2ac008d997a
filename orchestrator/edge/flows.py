"""Who owns each flow at this gateway (docs/security.md#authentication-and-ownership): sans-I/O.

A flow is a (tenant, flowId) pair: the tenant is the token's `sub` ("" with authentication off, so
the flowId alone names the flow then). One live session per flow; a second `start` of a live flow is
`flow_in_use`, unless it resumes it (docs/protocol.md#resume), which this registry answers too:
the owner to resume, or why not (`resume_unknown`, `resume_expired`, `resume_forbidden`). Flows that
ended recently are remembered (a bounded number) so a late resume is told the session has ended
rather than that it never existed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from orchestrator.core.protocol import ErrorCode
from orchestrator.edge.limits import Refusal

Owner = TypeVar("Owner")
REMEMBER_ENDED = 4096


class FlowRegistry(Generic[Owner]):
    """The live owner (a session driver) of each flow, and the flows that ended lately."""

    def __init__(self, remember_ended: int = REMEMBER_ENDED) -> None:
        self._live: dict[tuple[str, str], Owner] = {}
        self._ended: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._remember = remember_ended

    def claim(self, tenant: str, flow_id: str, owner: Owner) -> Refusal | None:
        """A new session of the flow: it owns it, or the flow is in use."""
        key = (tenant, flow_id)
        if key in self._live:
            return Refusal(ErrorCode.FLOW_IN_USE, "another session is streaming this flowId; retry once it has ended")
        self._live[key] = owner
        self._ended.pop(key, None)
        return None

    def release(self, tenant: str, flow_id: str, owner: Owner) -> None:
        """The owner's session is over (it may have been resumed on other connections meanwhile)."""
        key = (tenant, flow_id)
        if self._live.get(key) is owner:
            del self._live[key]
            self._ended[key] = None
            while len(self._ended) > self._remember:
                self._ended.popitem(last=False)

    def owner(self, tenant: str, flow_id: str) -> Owner | None:
        return self._live.get((tenant, flow_id))

    def find_for_resume(self, tenant: str, flow_id: str) -> Owner | Refusal:
        """The live session a `start.resume` of `tenant` continues, or why there is none."""
        owner = self._live.get((tenant, flow_id))
        if owner is not None:
            return owner
        if (tenant, flow_id) in self._ended:
            return Refusal(ErrorCode.RESUME_EXPIRED, "the session of this flowId has ended; start a new one")
        if any(f == flow_id for _, f in self._live) or any(f == flow_id for _, f in self._ended):
            return Refusal(ErrorCode.RESUME_FORBIDDEN, "this flowId belongs to another tenant")
        return Refusal(ErrorCode.RESUME_UNKNOWN, "no session of this flowId to resume on this gateway")

    def __len__(self) -> int:
        return len(self._live)
