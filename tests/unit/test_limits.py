"""Limits per client (orchestrator/edge/limits.py) on a fake clock."""

from __future__ import annotations

import pytest

from common.envconf import ConfigError, load_env
from orchestrator.config import GatewayConfig
from orchestrator.core.protocol import FATAL_CLOSE, ErrorCode
from orchestrator.edge.limits import (
    REFUSAL_REASONS,
    ClientLimits,
    LimitsConfig,
    Refusal,
    Ticket,
    TokenBucket,
    own_origin,
)
from tests.clock import FakeClock

pytestmark = pytest.mark.unit
OFF = LimitsConfig(
    max_connections_per_ip=0,
    max_pending=0,
    max_pending_per_ip=0,
    max_sessions_per_ip=0,
    max_sessions_per_tenant=0,
    session_rate_per_s=0,
)


def ticket(limits: ClientLimits, ip: str) -> Ticket:
    got = limits.connect(ip)
    assert isinstance(got, Ticket), got
    return got


def code(result: object) -> ErrorCode | None:
    return result.code if isinstance(result, Refusal) else None


def test_pending_connections_count_apart_from_live_sessions() -> None:
    """1000 idle sockets fill the pending pool (their own share of it), never MAX_SESSIONS."""
    limits = ClientLimits(LimitsConfig(max_pending_per_ip=16, max_connections_per_ip=0), max_sessions=1000)
    held = [limits.connect("10.0.0.66") for _ in range(1000)]
    assert sum(isinstance(t, Ticket) for t in held) == 16
    assert {code(t) for t in held[16:]} == {ErrorCode.IP_PENDING_LIMIT}
    legit = ticket(limits, "10.0.0.7")
    assert limits.start_session(legit, "10.0.0.7", 0.0) is None
    assert (limits.pending, limits.live) == (16, 1)


def test_the_pending_pool_has_a_gateway_wide_cap() -> None:
    limits = ClientLimits(LimitsConfig(max_pending=3, max_pending_per_ip=0), max_sessions=10)
    for i in range(3):
        ticket(limits, f"10.0.0.{i}")
    assert code(limits.connect("10.0.0.9")) == ErrorCode.TOO_MANY_PENDING


def test_a_started_session_frees_its_pending_slot_and_release_frees_everything() -> None:
    limits = ClientLimits(LimitsConfig(max_pending_per_ip=1), max_sessions=10)
    first = ticket(limits, "ip")
    assert code(limits.connect("ip")) == ErrorCode.IP_PENDING_LIMIT
    assert limits.start_session(first, "ip", 0.0) is None
    second = ticket(limits, "ip")  # the pending slot is free again
    assert limits.held_by("ip") == (2, 1, 1)
    limits.release(first)
    limits.release(second)
    assert limits.held_by("ip") == (0, 0, 0) and (limits.pending, limits.live) == (0, 0)


def test_connections_per_ip_count_pending_and_live() -> None:
    limits = ClientLimits(LimitsConfig(max_connections_per_ip=2, max_pending_per_ip=0), max_sessions=10)
    limits.start_session(ticket(limits, "ip"), "ip", 0.0)
    ticket(limits, "ip")
    assert code(limits.connect("ip")) == ErrorCode.IP_CONNECTION_LIMIT
    assert isinstance(limits.connect("other"), Ticket)


def test_max_sessions_counts_live_sessions_only() -> None:
    limits = ClientLimits(OFF, max_sessions=2)
    tickets = [ticket(limits, f"ip{i}") for i in range(5)]
    assert limits.start_session(tickets[0], "a", 0.0) is None
    assert limits.start_session(tickets[1], "b", 0.0) is None
    assert code(limits.start_session(tickets[2], "c", 0.0)) == ErrorCode.TOO_MANY_SESSIONS
    limits.release(tickets[0])
    assert limits.start_session(tickets[2], "c", 0.0) is None


def test_sessions_per_ip_and_per_tenant() -> None:
    cfg = LimitsConfig(max_sessions_per_ip=2, max_sessions_per_tenant=3, max_pending_per_ip=0, session_rate_per_s=0)
    limits = ClientLimits(cfg, max_sessions=100)
    assert limits.start_session(ticket(limits, "ip1"), "t", 0.0) is None
    assert limits.start_session(ticket(limits, "ip1"), "t", 0.0) is None
    assert code(limits.start_session(ticket(limits, "ip1"), "t", 0.0)) == ErrorCode.IP_SESSION_LIMIT
    assert limits.start_session(ticket(limits, "ip2"), "t", 0.0) is None
    assert code(limits.start_session(ticket(limits, "ip3"), "t", 0.0)) == ErrorCode.TENANT_SESSION_LIMIT
    assert limits.start_session(ticket(limits, "ip3"), "u", 0.0) is None  # another tenant, same limits


def test_a_tenant_claim_replaces_the_per_tenant_cap() -> None:
    limits = ClientLimits(OFF, max_sessions=100)
    assert limits.start_session(ticket(limits, "ip"), "t", 0.0, max_sessions=1) is None
    assert code(limits.start_session(ticket(limits, "ip"), "t", 0.0, max_sessions=1)) == ErrorCode.TENANT_SESSION_LIMIT
    assert code(limits.start_session(ticket(limits, "ip"), "z", 0.0, max_sessions=0)) == ErrorCode.TENANT_SESSION_LIMIT


def test_session_start_rate_is_a_token_bucket_per_tenant() -> None:
    clock = FakeClock()
    cfg = LimitsConfig(session_rate_per_s=2.0, session_burst=3, max_pending_per_ip=0, max_sessions_per_tenant=0)
    limits = ClientLimits(cfg, max_sessions=100)
    for _ in range(3):  # the burst
        assert limits.start_session(ticket(limits, "ip"), "t", clock()) is None
    refused = limits.start_session(ticket(limits, "ip"), "t", clock())
    assert code(refused) == ErrorCode.SESSION_RATE_LIMITED and "retry in 0.5 s" in refused.message  # type: ignore[union-attr]
    assert limits.start_session(ticket(limits, "ip"), "other", clock()) is None  # buckets are per tenant
    clock.advance(0.5)
    assert limits.start_session(ticket(limits, "ip"), "t", clock()) is None
    assert code(limits.start_session(ticket(limits, "ip"), "t", clock())) == ErrorCode.SESSION_RATE_LIMITED


def test_token_bucket_refills_up_to_its_burst() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2, at=0.0)
    assert [bucket.take(0.0), bucket.take(0.0)] == [0.0, 0.0]
    assert bucket.take(0.0) == 1.0
    assert bucket.full(100.0) and bucket.tokens == 2.0


def test_a_refused_start_leaves_the_connection_pending() -> None:
    limits = ClientLimits(OFF, max_sessions=1)
    limits.start_session(ticket(limits, "a"), "a", 0.0)
    waiting = ticket(limits, "b")
    assert code(limits.start_session(waiting, "b", 0.0)) == ErrorCode.TOO_MANY_SESSIONS
    limits.release(waiting)
    assert (limits.pending, limits.live) == (0, 1)


@pytest.mark.parametrize(
    ("allowed", "origins", "ok"),
    [
        ((), [], True),  # not a browser
        ((), ["https://evil.example"], False),  # empty list: no browser origin
        (("https://app.example.com",), ["https://app.example.com"], True),
        (("https://app.example.com/",), ["HTTPS://APP.EXAMPLE.COM"], True),
        (("https://app.example.com",), ["https://app.example.com.evil.example"], False),
        (("https://app.example.com",), ["null"], False),
        (("https://app.example.com",), ["https://app.example.com", "https://evil.example"], False),
        (("*",), ["https://anything.example"], True),
    ],
)
def test_origin_allow_list(allowed: tuple[str, ...], origins: list[str], ok: bool) -> None:
    limits = ClientLimits(LimitsConfig(allowed_origins=allowed), max_sessions=1)
    result = limits.check_origin(origins)
    assert (result is None) is ok
    if not ok:
        assert code(result) == ErrorCode.ORIGIN_NOT_ALLOWED


@pytest.mark.parametrize(
    ("hosts", "secure", "authenticated", "own"),
    [
        (["127.0.0.1:8080"], False, False, "http://127.0.0.1:8080"),
        (["LOCALHOST:8080"], False, False, "http://localhost:8080"),
        (["[::1]:8080"], True, False, "https://[::1]:8080"),
        (["127.0.0.2"], False, False, "http://127.0.0.2"),
        (["gw.example.com:443"], True, True, "https://gw.example.com"),  # a default port is left out
        (["gw.example.com:80"], False, True, "http://gw.example.com"),
        (["gw.example.com:8443"], True, True, "https://gw.example.com:8443"),
        # Without tokens, a name could be a DNS-rebinding page's own: only loopback counts.
        (["gw.example.com"], False, False, None),
        (["10.0.0.5:8080"], False, False, None),
        ([], False, True, None),
        (["a.example", "b.example"], False, True, None),
        (["gw.example.com:8080/x"], False, True, None),
        (["user@gw.example.com"], False, True, None),
        (["gw.example.com:"], False, True, None),
    ],
)
def test_own_origin_from_the_host_header(hosts: list[str], secure: bool, authenticated: bool, own: str | None) -> None:
    assert own_origin(hosts, secure=secure, authenticated=authenticated) == own


@pytest.mark.parametrize(
    ("origins", "ok"),
    [
        (["http://127.0.0.1:8080"], True),  # the page the gateway served
        (["HTTP://127.0.0.1:8080/"], True),
        (["http://127.0.0.1:8081"], False),  # another port is another origin
        (["https://127.0.0.1:8080"], False),
        (["http://localhost:8080"], False),  # another name too, though it points to the same place
        (["http://127.0.0.1:8080", "http://127.0.0.1:8080"], False),
        (["null"], False),
    ],
)
def test_the_gateways_own_origin_passes_without_the_allow_list(origins: list[str], ok: bool) -> None:
    limits = ClientLimits(LimitsConfig(allowed_origins=()), max_sessions=1)
    own = own_origin(["127.0.0.1:8080"], secure=False, authenticated=False)
    assert (limits.check_origin(origins, own) is None) is ok
    assert limits.check_origin(origins) is not None  # without its own origin, an empty list refuses every browser


def test_every_refusal_reason_has_a_close_code() -> None:
    for reason in REFUSAL_REASONS:
        assert reason in FATAL_CLOSE


def test_limits_load_from_the_environment_and_zero_turns_one_off() -> None:
    cfg = load_env(
        GatewayConfig,
        {"ALLOWED_ORIGINS": "https://a.example, https://B.example/", "MAX_SESSIONS_PER_IP": "0"},
    )
    assert cfg.limits.allowed_origins == ("https://a.example", "https://b.example")
    limits = ClientLimits(cfg.limits, max_sessions=1000)
    for i in range(40):  # past the default 32 per address: that limit is off
        assert limits.start_session(ticket(limits, "ip"), f"tenant{i}", 0.0) is None
    with pytest.raises(ConfigError, match="SESSION_START_BURST"):
        load_env(GatewayConfig, {"SESSION_START_BURST": "0"})
    with pytest.raises(ConfigError, match="MAX_PENDING_CONNECTIONS"):
        load_env(GatewayConfig, {"MAX_PENDING_CONNECTIONS": "-1"})
