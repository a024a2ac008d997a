"""The routing table: (language, domain) -> a named ASR pool, each pool a list of addresses
(SPEC §1, §4 "Routing"). Loaded from one TOML file (`ROUTING_FILE`); the format is in docs/routing.md
and deploy/routing.example.toml. Pure data: no sockets, no clock.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.envconf import ConfigError
from orchestrator.routing.breaker import BreakerConfig

ANY = "*"
_TOP_KEYS = {"default_pool", "pools", "routes", "breaker", "health", "retry", "dns"}
_POOL_KEYS = {"addrs", "dns", "max_inflight", "hotwords"}
_ROUTE_KEYS = {"lang", "domain", "pool"}
_HOSTPORT = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def normalise_lang(lang: str) -> str:
    """'en-US' -> 'en', 'ZH_hans' -> 'zh', 'auto' and '' -> '' (no language known)."""
    code = re.split(r"[-_]", lang.strip().lower(), maxsplit=1)[0]
    return "" if code == "auto" else code


def normalise_domain(domain: str) -> str:
    return domain.strip().lower()


@dataclass(frozen=True)
class HealthConfig:
    """How the pool watcher probes members with grpc.health.v1 Check."""

    interval_s: float = 2.0
    timeout_s: float = 1.0
    max_reconnect_backoff_ms: int = 2000  # so a restarted member is seen again quickly

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.timeout_s <= 0:
            raise ConfigError("health interval_s and timeout_s must be positive")
        if self.max_reconnect_backoff_ms < 100:
            raise ConfigError("health max_reconnect_backoff_ms must be at least 100")


@dataclass(frozen=True)
class DnsConfig:
    """How pool members named by DNS are found (docs/routing.md#members-from-dns)."""

    refresh_s: float = 10.0  # every name is resolved again this often
    # A hosts-format file ("address name..." lines) to resolve the names from instead of the system
    # resolver: for static setups and tests. Empty = the system resolver (getaddrinfo).
    hosts_file: str = ""

    def __post_init__(self) -> None:
        if self.refresh_s <= 0:
            raise ConfigError("dns refresh_s must be positive")


@dataclass(frozen=True)
class PoolSpec:
    name: str
    addrs: tuple[str, ...]
    max_inflight: int = 0  # per member, counted by this gateway; 0 = no client-side cap
    # "host:port" names whose every address (A/AAAA records) is a member, re-resolved every
    # `dns.refresh_s`: a Kubernetes headless Service, for instance.
    dns: tuple[str, ...] = ()
    hotwords: bool = True  # its engine applies `hints.hotwords` (Whisper); false: ignores them (pocketsphinx)


@dataclass(frozen=True)
class Route:
    lang: str = ANY
    domain: str = ANY
    pool: str = ""

    def matches(self, lang: str, domain: str) -> bool:
        return self.lang in (ANY, lang) and self.domain in (ANY, domain)


@dataclass(frozen=True)
class RoutingTable:
    default_pool: str
    pools: tuple[PoolSpec, ...]
    routes: tuple[Route, ...] = ()
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    max_attempts: int = 3  # members tried when opening one ASR stream
    dns: DnsConfig = field(default_factory=DnsConfig)

    def __post_init__(self) -> None:
        names = [p.name for p in self.pools]
        if not names:
            raise ConfigError("routing: at least one pool is required")
        if len(set(names)) != len(names):
            raise ConfigError("routing: duplicate pool names")
        if self.default_pool not in names:
            raise ConfigError(f"routing: default_pool {self.default_pool!r} is not a pool ({names})")
        for i, route in enumerate(self.routes):
            if route.pool not in names:
                raise ConfigError(f"routing: routes[{i}] names unknown pool {route.pool!r} ({names})")
        if self.max_attempts < 1:
            raise ConfigError("routing: retry max_attempts must be at least 1")

    @property
    def hotwords_applied(self) -> bool:
        """Whether every pool's engine applies hotwords, so any session's are (the `ack` says so)."""
        return all(p.hotwords for p in self.pools)

    @property
    def pool_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.pools)

    def pool(self, name: str) -> PoolSpec:
        for spec in self.pools:
            if spec.name == name:
                return spec
        raise KeyError(f"no pool {name!r} in the routing table")

    def route(self, lang: str, domain: str) -> str:
        """The pool for a session: the first route matching the normalised language and domain,
        else `default_pool`. An empty or unknown language only matches `lang = "*"` routes."""
        code, dom = normalise_lang(lang), normalise_domain(domain)
        for route in self.routes:
            if route.matches(code, dom):
                return route.pool
        return self.default_pool

    def serving_pools(self, lang: str, domain: str) -> tuple[str, ...]:
        """Every pool that can serve this language, in order of preference: the routed pool first, then
        the pools of the other routes that match the language (any domain), then the default pool. A
        deferred job whose own pool is gone runs on the next one (docs/transcripts.md); a pool of
        another language is never a candidate (its model may not know the language)."""
        code = normalise_lang(lang)
        order = [self.route(lang, domain)]
        order += [r.pool for r in self.routes if r.lang in (ANY, code)]
        order.append(self.default_pool)
        return tuple(dict.fromkeys(order))

    @classmethod
    def single_pool(cls, addrs: tuple[str, ...], name: str = "default") -> RoutingTable:
        """One pool that takes every session: the table when only ASR_ADDR is configured."""
        return cls(default_pool=name, pools=(_pool_spec(name, {"addrs": list(addrs)}),))

    @classmethod
    def load(cls, path: str | Path) -> RoutingTable:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"ROUTING_FILE {str(path)!r}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"ROUTING_FILE {str(path)!r} is not valid TOML: {exc}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"ROUTING_FILE {str(path)!r}: {exc}") from None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoutingTable:
        _no_unknown_keys("routing", d, _TOP_KEYS)
        default = d.get("default_pool")
        if not isinstance(default, str) or not default:
            raise ConfigError("routing: default_pool (a pool name) is required")
        pools = _table(d, "pools", "routing")
        routes = d.get("routes", [])
        if not isinstance(routes, list) or not all(isinstance(r, Mapping) for r in routes):
            raise ConfigError("routing: routes must be an array of tables ([[routes]])")
        retry = _table(d, "retry", "routing")
        _no_unknown_keys("retry", retry, {"max_attempts"})
        return cls(
            default_pool=default,
            pools=tuple(_pool_spec(name, body) for name, body in pools.items()),
            routes=tuple(_route(i, r) for i, r in enumerate(routes)),
            breaker=_sub_config(BreakerConfig, _table(d, "breaker", "routing"), "breaker"),
            health=_sub_config(HealthConfig, _table(d, "health", "routing"), "health"),
            max_attempts=_typed(retry, "max_attempts", int, 3, "retry"),
            dns=_sub_config(DnsConfig, _table(d, "dns", "routing"), "dns"),
        )


def _pool_spec(name: str, body: Any) -> PoolSpec:
    where = f"pools.{name}"
    if not isinstance(body, Mapping):
        raise ConfigError(f"routing: {where} must be a table")
    _no_unknown_keys(where, body, _POOL_KEYS)
    addrs, names = body.get("addrs", []), body.get("dns", [])
    for key, values in (("addrs", addrs), ("dns", names)):
        if not isinstance(values, list):
            raise ConfigError(f"routing: {where}.{key} must be a list of 'host:port'")
        for value in values:
            if not isinstance(value, str) or not _valid_addr(value) or (key == "dns" and value.startswith("unix:")):
                raise ConfigError(f"routing: {where}.{key} has {value!r}, not 'host:port'")
        if len(set(values)) != len(values):
            raise ConfigError(f"routing: {where}.{key} lists an address twice")
    if not addrs and not names:
        raise ConfigError(f"routing: {where} needs members: addrs (fixed 'host:port') and/or dns (names)")
    max_inflight = _typed(body, "max_inflight", int, 0, where)
    if max_inflight < 0:
        raise ConfigError(f"routing: {where}.max_inflight must be >= 0 (0 = no cap)")
    hotwords = _typed(body, "hotwords", bool, True, where)
    return PoolSpec(name, tuple(addrs), max_inflight, tuple(names), hotwords)


def _route(i: int, body: Mapping[str, Any]) -> Route:
    where = f"routes[{i}]"
    _no_unknown_keys(where, body, _ROUTE_KEYS)
    pool = body.get("pool")
    if not isinstance(pool, str) or not pool:
        raise ConfigError(f"routing: {where}.pool (a pool name) is required")
    lang = _typed(body, "lang", str, ANY, where).strip()
    domain = _typed(body, "domain", str, ANY, where).strip()
    if not lang or not domain:
        raise ConfigError(f"routing: {where}: lang and domain must be a value or '*', not empty")
    return Route(
        lang=ANY if lang == ANY else normalise_lang(lang) or ANY,
        domain=ANY if domain == ANY else normalise_domain(domain),
        pool=pool,
    )


def _valid_addr(addr: str) -> bool:
    if addr.startswith("unix:"):
        return len(addr) > len("unix:")
    m = _HOSTPORT.match(addr)
    return m is not None and 0 < int(m.group(1)) < 65536


def _table(d: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = d.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {key} must be a table")
    return value


def _no_unknown_keys(where: str, d: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"routing: unknown key(s) in {where}: {', '.join(unknown)}")


def _typed(d: Mapping[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = d.get(key, default)
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    if not ok:
        raise ConfigError(f"routing: {where}.{key} must be {kind.__name__}, got {value!r}")
    return value


def _sub_config(cls: Any, d: Mapping[str, Any], where: str) -> Any:
    fields = {f: type(getattr(cls, f)) for f in cls.__dataclass_fields__}
    _no_unknown_keys(where, d, set(fields))
    values = {k: _typed(d, k, fields[k], getattr(cls, k), where) for k in d}
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"routing: {where}: {exc}") from None
