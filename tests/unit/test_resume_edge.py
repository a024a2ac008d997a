"""Resume at the gateway's edge: which session a `start.resume` continues, or its coded refusal
(orchestrator/edge/flows.py), and how a resumed connection counts against the limits per client."""

from __future__ import annotations

import pytest

from orchestrator.core.protocol import ErrorCode
from orchestrator.edge.flows import FlowRegistry
from orchestrator.edge.limits import ClientLimits, LimitsConfig, Refusal, Ticket

pytestmark = pytest.mark.unit


def code(found: object) -> ErrorCode | None:
    return found.code if isinstance(found, Refusal) else None


def test_a_live_flow_is_owned_once_and_found_for_its_own_tenant() -> None:
    flows: FlowRegistry[str] = FlowRegistry()
    assert flows.claim("a", "f1", "driver-1") is None
    assert code(flows.claim("a", "f1", "driver-2")) is ErrorCode.FLOW_IN_USE
    assert flows.claim("b", "f1", "driver-3") is None  # another tenant's f1 is another flow
    assert flows.find_for_resume("a", "f1") == "driver-1"
    assert flows.find_for_resume("b", "f1") == "driver-3"


def test_an_unknown_flow_is_resume_unknown() -> None:
    flows: FlowRegistry[str] = FlowRegistry()
    flows.claim("a", "f1", "driver-1")
    assert code(flows.find_for_resume("a", "nope")) is ErrorCode.RESUME_UNKNOWN


def test_another_tenants_flow_is_resume_forbidden_live_or_ended() -> None:
    flows: FlowRegistry[str] = FlowRegistry()
    flows.claim("a", "f1", "driver-1")
    assert code(flows.find_for_resume("b", "f1")) is ErrorCode.RESUME_FORBIDDEN
    flows.release("a", "f1", "driver-1")
    assert code(flows.find_for_resume("b", "f1")) is ErrorCode.RESUME_FORBIDDEN


def test_an_ended_flow_is_resume_expired_until_forgotten_and_a_new_start_claims_it_again() -> None:
    flows: FlowRegistry[str] = FlowRegistry(remember_ended=2)
    flows.claim("a", "f1", "driver-1")
    flows.release("a", "f1", "someone-else")  # not the owner: nothing happens
    assert flows.find_for_resume("a", "f1") == "driver-1"
    flows.release("a", "f1", "driver-1")
    assert code(flows.find_for_resume("a", "f1")) is ErrorCode.RESUME_EXPIRED
    for n in range(2):
        flows.claim("a", f"other-{n}", "d")
        flows.release("a", f"other-{n}", "d")
    assert code(flows.find_for_resume("a", "f1")) is ErrorCode.RESUME_UNKNOWN  # forgotten (bounded)
    assert flows.claim("a", "other-1", "d2") is None and flows.find_for_resume("a", "other-1") == "d2"
    assert len(flows) == 1


def test_a_resumed_connection_leaves_the_pending_pool_and_adds_no_session() -> None:
    limits = ClientLimits(LimitsConfig(session_rate_per_s=1.0, session_burst=1), max_sessions=10)
    first = limits.connect("1.2.3.4")
    assert isinstance(first, Ticket) and limits.start_session(first, "a", 0.0) is None
    again = limits.connect("1.2.3.4")
    assert isinstance(again, Ticket) and limits.pending == 1
    refused = limits.resume_session(again, "a", 0.1)  # the start rate counts resumes too
    assert code(refused) is ErrorCode.SESSION_RATE_LIMITED and limits.pending == 1
    assert limits.resume_session(again, "a", 2.0) is None
    assert limits.pending == 0 and limits.live == 1 and limits.held_by("1.2.3.4") == (2, 0, 1)
    limits.release(again)
    assert limits.held_by("1.2.3.4") == (1, 0, 1)
    limits.release(first)
    assert limits.held_by("1.2.3.4") == (0, 0, 0) and limits.live == 0
