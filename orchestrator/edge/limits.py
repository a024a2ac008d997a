"""Limits per client at the gateway's edge (issue 10, docs/security.md): sans-I/O, the clock is a
parameter.

A connection is *pending* from the upgrade until its `start`, then *live* until it closes. Pending
connections have a pool of their own (`MAX_PENDING_CONNECTIONS`, and `MAX_PENDING_PER_IP`), apart from
the live sessions (`MAX_SESSIONS`): a client holding a thousand idle sockets fills the pending pool, or
its own share of it, never the room of the sessions that stream. The pending ones leave after
`START_TIMEOUT_SEC` (the session's start timeout).

Per client address: connections (pending and live), pending connections, live sessions. Per tenant
(who the session belongs to: the token's `sub` once authentication runs, the address until then):
live sessions, and a token bucket on session starts. Browsers must come from an allowed `Origin`.

Every refusal is a `Refusal` with its stable error code (core/protocol.py, docs/errors.md); the
gateway adapter turns it into an HTTP status before the upgrade or an `error` event and close code
after it, and counts it (`orchestrator_refusals_total{reason}`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from common.envconf import ConfigError, setting
from orchestrator.core.protocol import ErrorCode

# Every reason `orchestrator_refusals_total` counts, so each label exists (at 0) from the start.
REFUSAL_REASONS: tuple[ErrorCode, ...] = (
    ErrorCode.ORIGIN_NOT_ALLOWED,
    ErrorCode.IP_CONNECTION_LIMIT,
    ErrorCode.IP_PENDING_LIMIT,
    ErrorCode.TOO_MANY_PENDING,
    ErrorCode.IP_SESSION_LIMIT,
    ErrorCode.TENANT_SESSION_LIMIT,
    ErrorCode.SESSION_RATE_LIMITED,
    ErrorCode.TOO_MANY_SESSIONS,
    ErrorCode.SERVER_DRAINING,
)
# Idle token buckets are forgotten once there are this many (a full bucket holds no information).
_BUCKETS_BEFORE_PRUNE = 4096
# A Host header as browsers send it: a name, an IPv4 address or a bracketed IPv6 address, and a port.
_HOST = re.compile(r"(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclass(frozen=True)
class LimitsConfig:
    """Per-client limits; 0 turns a count or rate limit off."""

    max_connections_per_ip: int = setting(64, env="MAX_CONNECTIONS_PER_IP")
    max_pending: int = setting(256, env="MAX_PENDING_CONNECTIONS")
    max_pending_per_ip: int = setting(16, env="MAX_PENDING_PER_IP")
    max_sessions_per_ip: int = setting(32, env="MAX_SESSIONS_PER_IP")
    max_sessions_per_tenant: int = setting(32, env="MAX_SESSIONS_PER_TENANT")
    # Token bucket per tenant: `session_rate_per_s` starts per second on average, bursts of `session_burst`.
    session_rate_per_s: float = setting(2.0, env="SESSION_START_RATE")
    session_burst: int = setting(20, env="SESSION_START_BURST")
    # Browser origins allowed to open a stream (exact `scheme://host[:port]`, or `*`); a request without
    # an Origin header (not a browser) is not concerned. Empty: no browser may connect.
    allowed_origins: tuple[str, ...] = setting((), env="ALLOWED_ORIGINS")

    def __post_init__(self) -> None:
        counts = (
            "max_connections_per_ip",
            "max_pending",
            "max_pending_per_ip",
            "max_sessions_per_ip",
            "max_sessions_per_tenant",
            "session_burst",
        )
        for name in counts:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if self.session_rate_per_s < 0:
            raise ConfigError(f"session_rate_per_s={self.session_rate_per_s} must be >= 0")
        if self.session_rate_per_s > 0 and self.session_burst < 1:
            raise ConfigError("session_burst=0 would refuse every session while a rate is set")
        object.__setattr__(self, "allowed_origins", tuple(_origin(o) for o in self.allowed_origins))


@dataclass(frozen=True)
class Refusal:
    """Why a connection or a session is refused."""

    code: ErrorCode
    message: str


@dataclass
class Ticket:
    """One connection's hold on the limits, from `connect` to `release`."""

    ip: str
    tenant: str | None = None  # set once live
    resumed: bool = False  # carries a resumed session, counted by the connection that started it

    @property
    def live(self) -> bool:
        return self.tenant is not None


@dataclass
class TokenBucket:
    """`burst` tokens, refilled at `rate_per_s`; a session start takes one."""

    rate_per_s: float
    burst: int
    tokens: float = field(init=False)
    at: float = 0.0

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def _refill(self, now: float) -> None:
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.at) * self.rate_per_s)
        self.at = now

    def take(self, now: float) -> float:
        """0 when a token was taken; otherwise the seconds until one is there (nothing taken)."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class ClientLimits:
    """The counts behind every per-client limit. One per gateway; not thread-safe (one event loop)."""

    def __init__(self, config: LimitsConfig, max_sessions: int) -> None:
        self.config = config
        self.max_sessions = max_sessions
        self.pending = 0
        self.live = 0
        self._connections: dict[str, int] = {}  # per IP, pending + live
        self._pending: dict[str, int] = {}
        self._sessions_ip: dict[str, int] = {}
        self._sessions_tenant: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}

    def check_origin(self, origins: list[str], own: str | None = None) -> Refusal | None:
        """The request's Origin header values: none (not a browser) passes; one must be allowed, or be
        `own`, the gateway's own origin (`own_origin`: the page it serves at `GET /`)."""
        if not origins:
            return None
        allowed = self.config.allowed_origins
        if len(origins) == 1 and ("*" in allowed or _origin(origins[0]) in allowed or _origin(origins[0]) == own):
            return None
        shown = origins[0][:100]
        return Refusal(ErrorCode.ORIGIN_NOT_ALLOWED, f"origin {shown!r} is not in ALLOWED_ORIGINS")

    def connect(self, ip: str) -> Ticket | Refusal:
        """A new connection, pending until `start_session`."""
        cfg = self.config
        if _over(self._connections.get(ip, 0), cfg.max_connections_per_ip):
            return Refusal(
                ErrorCode.IP_CONNECTION_LIMIT,
                f"this address holds its maximum of {cfg.max_connections_per_ip} connections",
            )
        if _over(self._pending.get(ip, 0), cfg.max_pending_per_ip):
            return Refusal(
                ErrorCode.IP_PENDING_LIMIT,
                f"this address holds its maximum of {cfg.max_pending_per_ip} connections that have not sent start",
            )
        if _over(self.pending, cfg.max_pending):
            return Refusal(
                ErrorCode.TOO_MANY_PENDING,
                f"the gateway holds its maximum of {cfg.max_pending} connections before start",
            )
        _add(self._connections, ip, 1)
        _add(self._pending, ip, 1)
        self.pending += 1
        return Ticket(ip)

    def start_session(self, ticket: Ticket, tenant: str, now: float, max_sessions: int | None = None) -> Refusal | None:
        """The connection sent `start` for `tenant`: it becomes a live session, or is refused.
        `max_sessions` (e.g. a token's claim) replaces MAX_SESSIONS_PER_TENANT for this tenant."""
        if ticket.live:
            return None
        cfg = self.config
        tenant_cap = cfg.max_sessions_per_tenant if max_sessions is None else max_sessions
        if _over(self.live, self.max_sessions):
            return Refusal(
                ErrorCode.TOO_MANY_SESSIONS, f"the gateway holds its maximum of {self.max_sessions} sessions"
            )
        if _over(self._sessions_ip.get(ticket.ip, 0), cfg.max_sessions_per_ip):
            return Refusal(
                ErrorCode.IP_SESSION_LIMIT, f"this address holds its maximum of {cfg.max_sessions_per_ip} sessions"
            )
        if _over(self._sessions_tenant.get(tenant, 0), tenant_cap) or (max_sessions == 0):
            return Refusal(ErrorCode.TENANT_SESSION_LIMIT, f"this tenant holds its maximum of {tenant_cap} sessions")
        wait_s = self._bucket(tenant, now).take(now) if cfg.session_rate_per_s > 0 else 0.0
        if wait_s > 0:
            return Refusal(
                ErrorCode.SESSION_RATE_LIMITED,
                f"more than {cfg.session_rate_per_s:g} session starts per second; retry in {wait_s:.1f} s",
            )
        self._leave_pending(ticket.ip)
        _add(self._sessions_ip, ticket.ip, 1)
        _add(self._sessions_tenant, tenant, 1)
        self.live += 1
        ticket.tenant = tenant
        return None

    def resume_session(self, ticket: Ticket, tenant: str, now: float) -> Refusal | None:
        """The connection resumes a live session (docs/protocol.md#resume): it leaves the pending pool
        and adds no session (the session stays counted once, by the connection that started it), but
        takes a token of the tenant's start rate like any start: an attempt is an attempt."""
        if ticket.live or ticket.resumed:
            return None
        cfg = self.config
        wait_s = self._bucket(tenant, now).take(now) if cfg.session_rate_per_s > 0 else 0.0
        if wait_s > 0:
            return Refusal(
                ErrorCode.SESSION_RATE_LIMITED,
                f"more than {cfg.session_rate_per_s:g} session starts per second; retry in {wait_s:.1f} s",
            )
        self._leave_pending(ticket.ip)
        ticket.resumed = True
        return None

    def release(self, ticket: Ticket) -> None:
        """The connection closed (call exactly once per `connect` that returned a ticket)."""
        _add(self._connections, ticket.ip, -1)
        if ticket.live:
            assert ticket.tenant is not None
            _add(self._sessions_ip, ticket.ip, -1)
            _add(self._sessions_tenant, ticket.tenant, -1)
            self.live -= 1
        elif not ticket.resumed:
            self._leave_pending(ticket.ip)

    def held_by(self, ip: str) -> tuple[int, int, int]:
        """(connections, pending, live sessions) of one address, for tests and logs."""
        return self._connections.get(ip, 0), self._pending.get(ip, 0), self._sessions_ip.get(ip, 0)

    def _leave_pending(self, ip: str) -> None:
        _add(self._pending, ip, -1)
        self.pending -= 1

    def _bucket(self, tenant: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(tenant)
        if bucket is None:
            if len(self._buckets) >= _BUCKETS_BEFORE_PRUNE:
                self._buckets = {t: b for t, b in self._buckets.items() if not b.full(now)}
            bucket = TokenBucket(self.config.session_rate_per_s, self.config.session_burst, at=now)
            self._buckets[tenant] = bucket
        return bucket


def _over(count: int, limit: int) -> bool:
    """Whether one more would pass `limit` (0: no limit)."""
    return limit > 0 and count >= limit


def _add(counts: dict[str, int], key: str, n: int) -> None:
    value = counts.get(key, 0) + n
    if value > 0:
        counts[key] = value
    else:
        counts.pop(key, None)


def own_origin(hosts: list[str], *, secure: bool, authenticated: bool) -> str | None:
    """The gateway's own origin as a request names it (`scheme://` + its one `Host` header), so the page
    served at `GET /` may open its socket whatever ALLOWED_ORIGINS says; None when it cannot count.

    A cross-site page never matches: its Origin names its own site, not the gateway's Host. A DNS-rebinding
    page does (its name now points at the gateway), but it holds no token, and tokens are not ambient
    credentials a browser would add; so without authentication only a loopback Host (`localhost`,
    127.0.0.0/8, `[::1]`) counts, a name no rebinding page can have."""
    if len(hosts) != 1:
        return None
    match = _HOST.fullmatch(hosts[0].strip())
    if match is None:
        return None
    host, port = match["host"].lower(), match["port"]
    if not authenticated and not _loopback_host(host):
        return None
    scheme = "https" if secure else "http"
    return f"{scheme}://{host}" + ("" if port in (None, _DEFAULT_PORTS[scheme]) else f":{port}")


def _loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _origin(value: str) -> str:
    """An origin as compared: lower case, no trailing slash (browsers send `scheme://host[:port]`)."""
    return value.strip().rstrip("/").lower()
