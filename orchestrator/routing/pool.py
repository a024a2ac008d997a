"""ASR pools: client-side load balancing, health and circuit breaking per member (SPEC §4).

`AsrPool.pick` is pure (time injected): least in-flight among healthy members whose breaker allows,
ties round-robin. `open_with_retries` walks `pick` order when opening one stream. `PoolSet` holds every
pool of a `RoutingTable`, probes members with grpc.health.v1 and, for pools named by DNS, re-resolves
their names and adds and drains members as addresses appear and vanish. See docs/routing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Counter, Gauge

from common.server import GRPC_OPTIONS
from common.tls import TlsConfig, grpc_channel
from orchestrator.metrics import REGISTRY
from orchestrator.routing.breaker import BreakerConfig, CircuitBreaker
from orchestrator.routing.table import PoolSpec, RoutingTable

log = logging.getLogger(__name__)
T = TypeVar("T")

# Answers that say "this member is not working": they count for its breaker and the next member is
# tried. A TimeoutError from the caller's own deadline counts the same as DEADLINE_EXCEEDED.
FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
# "Busy": the member is alive but at its limit; try the next one, leave its breaker alone.
BUSY_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})

MEMBERS_HEALTHY = Gauge(
    "orchestrator_asr_pool_members_healthy",
    "ASR pool members whose last health check passed",
    ["pool"],
    registry=REGISTRY,
)
BREAKER_OPENS = Counter(
    "orchestrator_asr_pool_breaker_open_total",
    "Circuit breaker openings per member",
    ["pool", "addr"],
    registry=REGISTRY,
)
PICKS = Counter(
    "orchestrator_asr_pool_picks_total",
    "Member picks: ok, or why no member could take the session",
    ["pool", "result"],
    registry=REGISTRY,
)

MEMBERS = Gauge(
    "orchestrator_asr_pool_members",
    "ASR pool members known to this gateway: fixed addresses plus what the pool's DNS names resolve to",
    ["pool"],
    registry=REGISTRY,
)
DNS_FAILURES = Counter(
    "orchestrator_asr_pool_dns_failures_total",
    "Resolutions of a pool's DNS name that failed (the members it had are kept)",
    ["pool"],
    registry=REGISTRY,
)

PICK_RESULTS = ("ok", "tried_all", "full", "breaker_open", "unhealthy")

# host -> its addresses (raises OSError or LookupError when it has none)
Resolver = Callable[[str], Awaitable[Sequence[str]]]


async def system_resolve(host: str) -> list[str]:
    """Every address of `host` from the system resolver (getaddrinfo, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def parse_hosts(text: str) -> dict[str, list[str]]:
    """A hosts file ("address name [alias...]" lines, # comments) as name -> addresses, in file order."""
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            addr = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            continue
        for name in fields[1:]:
            addrs = table.setdefault(name.lower(), [])
            if addr not in addrs:
                addrs.append(addr)
    return table


def hosts_file_resolver(path: str | Path) -> Resolver:
    """Resolves from a hosts-format file, read again at every call (routing `dns.hosts_file`)."""

    async def resolve(host: str) -> list[str]:
        text = await asyncio.to_thread(Path(path).read_text)
        addrs = parse_hosts(text).get(host.lower())
        if not addrs:
            raise LookupError(f"{host} is not in {path}")
        return addrs

    return resolve


def member_addr(ip: str, port: str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class Member:
    """One ASR address of a pool: its channel (lazy), breaker, in-flight count and health flag."""

    def __init__(
        self,
        pool: str,
        addr: str,
        breaker: CircuitBreaker,
        max_inflight: int = 0,
        channel_options: Sequence[tuple[str, Any]] = tuple(GRPC_OPTIONS),
        tls: TlsConfig | None = None,
        dns_name: str = "",
    ) -> None:
        self.pool = pool
        self.addr = addr
        self.dns_name = dns_name  # the name it was resolved from ("" for a fixed address)
        self.breaker = breaker
        self.max_inflight = max_inflight
        self.inflight = 0
        # Optimistic until the first probe: a gateway whose watcher has not run yet still routes,
        # and the breaker covers a member that is in fact down.
        self.healthy = True
        self.last_check_at: float | None = None
        self.last_check_error = ""
        self._channel_options = list(channel_options)
        if dns_name and tls is not None and tls.enabled:
            # Dialled by address, verified by name: the certificate names the Service, not the pod.
            self._channel_options.append(("grpc.ssl_target_name_override", dns_name))
        self._tls = tls
        self._channel: grpc.aio.Channel | None = None

    def __repr__(self) -> str:
        return f"Member({self.pool}/{self.addr}, inflight={self.inflight}, healthy={self.healthy})"

    @property
    def full(self) -> bool:
        return 0 < self.max_inflight <= self.inflight

    def channel(self) -> grpc.aio.Channel:
        """The member's channel, created on first use (inside the running loop)."""
        if self._channel is None:
            self._channel = grpc_channel(self.addr, self._tls, self._channel_options)
        return self._channel

    def acquire(self) -> None:
        self.inflight += 1

    def release(self) -> None:
        self.inflight = max(0, self.inflight - 1)

    @contextlib.contextmanager
    def lease(self) -> Iterator[Member]:
        """Counts one in-flight session for the body."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def record_success(self, now: float) -> None:
        self.breaker.record_success(now)

    def record_failure(self, now: float, why: str = "") -> None:
        """Count a failure; a call that opens the breaker is counted and logged."""
        if self.breaker.record_failure(now):
            BREAKER_OPENS.labels(self.pool, self.addr).inc()
            log.warning(
                "asr member %s/%s: breaker open for %.1f s (%s)",
                self.pool,
                self.addr,
                self.breaker.open_period_s,
                why or "failures",
                extra={"stage": "asr", "event": "breaker_open", "err_code": why or None},
            )

    def record_busy(self, now: float) -> None:
        self.breaker.record_busy(now)

    async def check_health(self, timeout_s: float, now: float) -> bool:
        """One grpc.health.v1 Check; sets `healthy`. Does not touch the breaker (docs/routing.md)."""
        stub = health_pb2_grpc.HealthStub(self.channel())
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
            ok = reply.status == health_pb2.HealthCheckResponse.SERVING
            error = "" if ok else health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.aio.AioRpcError as exc:
            ok, error = False, exc.code().name
        if ok != self.healthy:
            log.info(
                "asr member %s/%s now %s %s",
                self.pool,
                self.addr,
                "healthy" if ok else "unhealthy",
                error,
                extra={"stage": "asr", "event": "member_health", "err_code": error or None},
            )
        self.healthy, self.last_check_at, self.last_check_error = ok, now, error
        return ok

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()


class AsrPool:
    """The members of one named pool and the client-side load-balancing policy.

    Members are the pool's fixed addresses plus what its DNS names resolve to (`set_resolved`). A
    member whose address vanishes is no longer picked; it keeps its channel until its last stream ends
    (`drained`)."""

    def __init__(
        self,
        spec: PoolSpec,
        breaker: BreakerConfig | None = None,
        channel_options: Sequence[tuple[str, Any]] = tuple(GRPC_OPTIONS),
        tls: TlsConfig | None = None,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self._breaker = breaker
        self._channel_options = tuple(channel_options)
        self._tls = tls
        self.members: tuple[Member, ...] = tuple(self._member(addr) for addr in spec.addrs)
        self.leaving: list[Member] = []  # gone from DNS, streams still open
        self._resolved: dict[str, tuple[str, ...]] = {}  # DNS name -> member addresses
        self._next = 0  # round-robin start among equally loaded members
        MEMBERS.labels(self.name).set(len(self.members))
        MEMBERS_HEALTHY.labels(self.name).set(self.healthy_count)
        DNS_FAILURES.labels(self.name)
        for result in PICK_RESULTS:  # every label set known at start is exported, at 0
            PICKS.labels(self.name, result)
        for member in self.members:
            BREAKER_OPENS.labels(self.name, member.addr)

    def _member(self, addr: str, dns_name: str = "") -> Member:
        return Member(
            self.name,
            addr,
            CircuitBreaker(self._breaker),
            self.spec.max_inflight,
            self._channel_options,
            self._tls,
            dns_name,
        )

    def set_resolved(self, name: str, addrs: Sequence[str]) -> tuple[list[Member], list[Member]]:
        """What DNS name `name` now resolves to (member addresses). Returns (added, removed) members;
        the removed ones move to `leaving` until their streams end."""
        self._resolved[name] = tuple(addrs)
        wanted: dict[str, str] = {addr: "" for addr in self.spec.addrs}
        for dns_name in self.spec.dns:
            for addr in self._resolved.get(dns_name, ()):
                wanted.setdefault(addr, dns_name.rpartition(":")[0])
        current = {m.addr: m for m in self.members}
        added = [self._member(addr, host) for addr, host in wanted.items() if addr not in current]
        removed = [m for addr, m in current.items() if addr not in wanted]
        if not added and not removed:
            return [], []
        fresh = {m.addr: m for m in added}
        self.members = tuple(current.get(addr) or fresh[addr] for addr in wanted)
        self.leaving.extend(removed)
        self._next = self._next % len(self.members) if self.members else 0
        for member in added:
            BREAKER_OPENS.labels(self.name, member.addr)
        for member in removed:
            with contextlib.suppress(KeyError):
                BREAKER_OPENS.remove(self.name, member.addr)
        MEMBERS.labels(self.name).set(len(self.members))
        self.refresh_gauge()
        return added, removed

    def drained(self) -> list[Member]:
        """Leaving members whose last stream has ended: no longer kept (the caller closes them)."""
        done = [m for m in self.leaving if m.inflight == 0]
        self.leaving = [m for m in self.leaving if m.inflight > 0]
        return done

    @property
    def healthy_count(self) -> int:
        return sum(m.healthy for m in self.members)

    def member(self, addr: str) -> Member:
        for m in self.members:
            if m.addr == addr:
                return m
        raise KeyError(f"no member {addr!r} in pool {self.name!r}")

    def pick(self, now: float, exclude: Collection[str] = ()) -> Member | None:
        """The member for a new session, or None when none can take one. `exclude` holds addresses
        already tried. A HALF_OPEN member picked here has taken its breaker's only trial."""
        n = len(self.members)
        if n == 0:
            PICKS.labels(self.name, "unhealthy").inc()
            return None
        order = [self.members[(self._next + i) % n] for i in range(n)]
        candidates = [
            m for m in order if m.addr not in exclude and m.healthy and not m.full and m.breaker.available(now)
        ]
        if not candidates:
            PICKS.labels(self.name, self.why_none(now, exclude)).inc()
            return None
        chosen = min(candidates, key=lambda m: m.inflight)  # first of the least loaded in RR order
        chosen.breaker.allow(now)
        self._next = (self.members.index(chosen) + 1) % n
        PICKS.labels(self.name, "ok").inc()
        return chosen

    def why_none(self, now: float, exclude: Collection[str] = ()) -> str:
        """Why `pick` found nobody: tried_all, full, breaker_open or unhealthy (the metric label)."""
        left = [m for m in self.members if m.addr not in exclude]
        if not left:
            return "tried_all"
        alive = [m for m in left if m.healthy]
        if any(m.full and m.breaker.available(now) for m in alive):
            return "full"
        return "breaker_open" if alive else "unhealthy"

    def refresh_gauge(self) -> None:
        MEMBERS_HEALTHY.labels(self.name).set(self.healthy_count)

    async def close(self) -> None:
        await asyncio.gather(*(m.close() for m in (*self.members, *self.leaving)))


class MemberBusy(Exception):
    """The member is alive and answered, but refused the stream for load: no verdict on its health."""


class PoolExhausted(RuntimeError):
    """No member of the pool could take the session: the caller degrades to record-only (SPEC §4).
    `reason` is "busy" (some member was at its limit) or "unavailable" (down, failing, breaker open)."""

    def __init__(self, pool: str, reason: str, attempts: Sequence[tuple[str, str]], left: str = "") -> None:
        self.pool, self.reason, self.attempts = pool, reason, tuple(attempts)
        tried = ", ".join(f"{addr}: {outcome}" for addr, outcome in attempts) or "no member tried"
        rest = f"; others: {left}" if left and left != "tried_all" else ""
        super().__init__(f"asr pool {pool!r} {reason} ({tried}{rest})")


@dataclass
class Lease(Generic[T]):
    """An opened stream on a member: `value` is what open_fn returned. The member counts one
    in-flight session until `release()` (idempotent; also on leaving a `with` block)."""

    member: Member
    value: T
    attempts: tuple[tuple[str, str], ...] = ()
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.member.release()

    def __enter__(self) -> Lease[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


async def open_with_retries(
    pool: AsrPool,
    open_fn: Callable[[Member], Awaitable[T]],
    now_fn: Callable[[], float],
    max_attempts: int,
) -> Lease[T]:
    """Open one stream, trying members in `pick` order, at most `max_attempts` of them.

    `open_fn(member)` returns once the stream is known to be up, or raises MemberBusy, grpc.aio.AioRpcError
    or TimeoutError (its own deadline). Failure codes count for the member's breaker and the next
    member is tried; MemberBusy and RESOURCE_EXHAUSTED are "busy": the next member is tried and the
    breaker is left alone, so load never opens a breaker.
    Any other error is the request's fault, not the member's: it propagates unchanged.
    Raises PoolExhausted when nobody could take the stream.
    """
    attempts: list[tuple[str, str]] = []
    busy, left = False, ""
    while len(attempts) < max_attempts:
        member = pool.pick(now_fn(), exclude={addr for addr, _ in attempts})
        if member is None:
            left = pool.why_none(now_fn(), {a for a, _ in attempts})
            busy = busy or left == "full"
            break
        member.acquire()
        try:
            value = await open_fn(member)
        except MemberBusy:
            member.release()
            member.record_busy(now_fn())
            busy = True
            attempts.append((member.addr, "busy"))
            continue
        except grpc.aio.AioRpcError as exc:
            member.release()
            code = exc.code()
            if code in BUSY_CODES:
                member.record_busy(now_fn())
                busy = True
            elif code in FAILURE_CODES:
                member.record_failure(now_fn(), code.name)
            else:
                member.breaker.release(now_fn())
                raise
            attempts.append((member.addr, code.name))
            continue
        except TimeoutError:
            member.release()
            member.record_failure(now_fn(), "timeout")
            attempts.append((member.addr, "timeout"))
            continue
        except BaseException:  # cancelled, or a bug in open_fn: no verdict on the member
            member.release()
            member.breaker.release(now_fn())
            raise
        member.record_success(now_fn())
        return Lease(member, value, tuple(attempts))
    raise PoolExhausted(pool.name, "busy" if busy else "unavailable", attempts, left)


class PoolSet:
    """Every pool of a routing table, and the health watcher that probes their members."""

    def __init__(
        self,
        table: RoutingTable,
        channel_options: Sequence[tuple[str, Any]] | None = None,
        tls: TlsConfig | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.table = table
        options = list(channel_options if channel_options is not None else GRPC_OPTIONS)
        options.append(("grpc.max_reconnect_backoff_ms", table.health.max_reconnect_backoff_ms))
        self.pools = {spec.name: AsrPool(spec, table.breaker, options, tls) for spec in table.pools}
        if resolver is None:
            resolver = hosts_file_resolver(table.dns.hosts_file) if table.dns.hosts_file else system_resolve
        self._resolve = resolver
        self._watcher: asyncio.Task[None] | None = None

    @property
    def uses_dns(self) -> bool:
        return any(spec.dns for spec in self.table.pools)

    async def refresh_dns(self) -> list[Member]:
        """Resolve every pool's DNS names once and update its members; returns the members removed.
        A name that fails to resolve keeps the members it had (a resolver outage must not empty a
        pool; the health checks tell whether they still answer). Drained members are closed."""
        removed: list[Member] = []
        names = {name for spec in self.table.pools for name in spec.dns}
        answers = await asyncio.gather(*(self._resolve(n.rpartition(":")[0]) for n in names), return_exceptions=True)
        by_name = dict(zip(names, answers, strict=True))
        for pool in self.pools.values():
            for name in pool.spec.dns:
                answer = by_name[name]
                if isinstance(answer, BaseException):
                    if not isinstance(answer, OSError | LookupError):
                        raise answer
                    DNS_FAILURES.labels(pool.name).inc()
                    log.warning(
                        "asr pool %s: resolving %s failed (%s); keeping its members",
                        pool.name,
                        name,
                        answer,
                        extra={"stage": "asr", "event": "dns_failed", "err_code": "dns_failed"},
                    )
                    continue
                port = name.rpartition(":")[2]
                added, gone = pool.set_resolved(name, [member_addr(ip, port) for ip in answer])
                for member, verb in [(m, "added") for m in added] + [(m, "draining") for m in gone]:
                    log.info(
                        "asr pool %s: member %s %s (%s)",
                        pool.name,
                        member.addr,
                        verb,
                        name,
                        extra={"stage": "asr", "event": f"member_{verb}"},
                    )
                removed.extend(gone)
            await asyncio.gather(*(m.close() for m in pool.drained()))
        return removed

    async def watch_dns(self, on_removed: Callable[[Sequence[Member]], None] = lambda _: None) -> None:
        """`refresh_dns` every `dns.refresh_s` until cancelled; `on_removed` hears of removed members."""
        while True:
            try:
                on_removed(await self.refresh_dns())
            except Exception:  # a resolver bug must not end the watcher; members stay as they are
                log.exception("asr pool dns round failed", extra={"stage": "asr"})
            await asyncio.sleep(self.table.dns.refresh_s)

    def pool(self, name: str) -> AsrPool:
        try:
            return self.pools[name]
        except KeyError:
            raise KeyError(f"no pool {name!r}; pools are {sorted(self.pools)}") from None

    def route(self, lang: str, domain: str) -> AsrPool:
        """The pool the routing table picks for this language and domain."""
        return self.pools[self.table.route(lang, domain)]

    def pick_serving(self, lang: str, domain: str, now: float) -> Member | None:
        """A member of the first pool that serves this language and can take a stream now
        (`RoutingTable.serving_pools`), or None when every such pool is busy or down."""
        for name in self.table.serving_pools(lang, domain):
            member = self.pools[name].pick(now)
            if member is not None:
                return member
        return None

    def members(self) -> Iterator[Member]:
        for pool in self.pools.values():
            yield from pool.members

    async def check_health(self) -> None:
        """Probe every member once, concurrently."""
        timeout_s, now = self.table.health.timeout_s, time.monotonic()
        await asyncio.gather(*(m.check_health(timeout_s, now) for m in self.members()))
        for pool in self.pools.values():
            pool.refresh_gauge()

    async def watch_health(self, interval_s: float | None = None) -> None:
        """Probe every member each `interval_s` (default from the table) until cancelled."""
        interval = interval_s if interval_s is not None else self.table.health.interval_s
        while True:
            try:
                await self.check_health()
            except Exception:  # a probe bug must not end the watcher; members keep their last state
                log.exception("asr pool health round failed", extra={"stage": "asr"})
            await asyncio.sleep(interval)

    def start_health_watch(self, interval_s: float | None = None) -> asyncio.Task[None]:
        """Run `watch_health` as a task owned by this PoolSet; `close()` stops it."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(
                self.watch_health(interval_s), name="asr-pool-health"
            )
        return self._watcher

    async def close(self) -> None:
        """Stop the watcher and close every member's channel."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await asyncio.gather(*(pool.close() for pool in self.pools.values()))
