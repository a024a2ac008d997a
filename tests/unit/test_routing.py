"""The routing table: TOML format, validation, (lang, domain) -> pool (SPEC §4 "Routing")."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from common.envconf import ConfigError
from orchestrator.routing.breaker import BreakerConfig
from orchestrator.routing.table import HealthConfig, RoutingTable, normalise_lang

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "routing.example.toml"

TOML = """
default_pool = "multi"
[pools.en]
addrs = ["127.0.0.1:50061", "127.0.0.1:50062"]
[pools.multi]
addrs = ["127.0.0.1:50071"]
[pools.medical]
addrs = ["asr-med.internal:50081"]
max_inflight = 4
[[routes]]
lang = "en"
domain = "medical"
pool = "medical"
[[routes]]
lang = "en"
domain = "*"
pool = "en"
[[routes]]
lang = "zh"
domain = "*"
pool = "multi"
[[routes]]
lang = "*"
domain = "medical"
pool = "medical"
"""


def base() -> dict[str, Any]:
    return {
        "default_pool": "multi",
        "pools": {"en": {"addrs": ["127.0.0.1:1"]}, "multi": {"addrs": ["127.0.0.1:2"]}},
        "routes": [{"lang": "en", "domain": "*", "pool": "en"}],
    }


@pytest.fixture
def table(tmp_path: Path) -> RoutingTable:
    path = tmp_path / "routing.toml"
    path.write_text(TOML)
    return RoutingTable.load(path)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("en", "en"),
        ("en-US", "en"),
        ("EN_gb", "en"),
        (" zh-Hans ", "zh"),
        ("auto", ""),
        ("", ""),
        ("pt", "pt"),
    ],
)
def test_language_codes_are_normalised(raw: str, code: str) -> None:
    assert normalise_lang(raw) == code


@pytest.mark.parametrize(
    ("lang", "domain", "pool"),
    [
        ("en", "default", "en"),
        ("en-US", "Default", "en"),
        ("en", "medical", "medical"),  # the first match wins: the specific route is listed first
        ("EN", "MEDICAL", "medical"),
        ("zh", "default", "multi"),
        ("zh-CN", "medical", "multi"),  # zh/* comes before */medical
        ("fr", "medical", "medical"),  # unknown language: only "*" routes match
        ("", "medical", "medical"),  # no language yet: only "*" routes match
        ("fr", "default", "multi"),  # nothing matches: default_pool
        ("", "", "multi"),
        ("auto", "default", "multi"),
    ],
)
def test_route_first_match_wins_else_default(table: RoutingTable, lang: str, domain: str, pool: str) -> None:
    assert table.route(lang, domain) == pool


@pytest.mark.parametrize(
    ("lang", "domain", "pools"),
    [
        ("en", "default", ("en", "medical", "multi")),  # its own pool, the other English route, the default
        ("en", "medical", ("medical", "en", "multi")),
        ("zh", "default", ("multi", "medical")),  # */medical serves every language
        ("fr", "default", ("multi", "medical")),
        ("", "", ("multi", "medical")),
    ],
)
def test_serving_pools_start_with_the_route_and_never_add_another_language(
    table: RoutingTable, lang: str, domain: str, pools: tuple[str, ...]
) -> None:
    assert table.serving_pools(lang, domain) == pools


def test_serving_pools_of_a_language_without_route_is_the_default_alone() -> None:
    table = RoutingTable.from_dict(base())
    assert table.serving_pools("de", "") == ("multi",)
    assert table.serving_pools("en", "") == ("en", "multi")


def test_loaded_table_holds_pools_and_defaults(table: RoutingTable) -> None:
    assert table.pool_names == ("en", "multi", "medical")
    assert table.pool("en").addrs == ("127.0.0.1:50061", "127.0.0.1:50062")
    assert table.pool("medical").max_inflight == 4 and table.pool("en").max_inflight == 0
    assert table.breaker == BreakerConfig() and table.health == HealthConfig() and table.max_attempts == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.default_pool = "en"  # type: ignore[misc]
    with pytest.raises(KeyError, match="nope"):
        table.pool("nope")


def test_optional_sections_are_read() -> None:
    d = base() | {
        "breaker": {"failure_threshold": 5, "open_s": 2, "max_open_s": 30.0, "backoff_factor": 1.5},
        "health": {"interval_s": 0.5, "timeout_s": 0.25, "max_reconnect_backoff_ms": 500},
        "retry": {"max_attempts": 2},
    }
    t = RoutingTable.from_dict(d)
    assert t.breaker == BreakerConfig(5, 2.0, 30.0, 1.5)
    assert t.health == HealthConfig(0.5, 0.25, 500)
    assert t.max_attempts == 2


def test_routes_may_be_omitted_and_default_to_any() -> None:
    d = base()
    d["routes"] = [{"pool": "en"}]
    t = RoutingTable.from_dict(d)
    assert t.route("zh", "x") == "en"
    del d["routes"]
    assert RoutingTable.from_dict(d).route("en", "default") == "multi"


def test_single_pool_table() -> None:
    t = RoutingTable.single_pool(("127.0.0.1:5000",))
    assert t.pool_names == ("default",) and t.route("zh", "any") == "default"


def test_example_file_loads() -> None:
    t = RoutingTable.load(EXAMPLE)
    assert t.route("en-US", "default") != t.route("zh", "default")


def mutate(change: dict[str, Any]) -> dict[str, Any]:
    d = base()
    for dotted, value in change.items():
        target: Any = d
        *path, last = dotted.split(".")
        for key in path:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is KeyError:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return d


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"default_pool": KeyError}, "default_pool"),
        ({"default_pool": "nope"}, "default_pool 'nope' is not a pool"),
        ({"default_pool": 3}, "default_pool"),
        ({"pools": {}}, "at least one pool"),
        ({"pools": "x"}, "pools must be a table"),
        ({"pools.en.addrs": []}, "pools.en needs members"),
        ({"pools.en.addrs": KeyError}, "pools.en needs members"),
        ({"pools.en.addrs": "x:1"}, "pools.en.addrs must be a list"),
        ({"pools.en.dns": ["unix:/x"]}, "pools.en.dns has 'unix:/x'"),
        ({"pools.en.dns": ["a:1", "a:1"]}, "pools.en.dns lists an address twice"),
        ({"dns": {"refresh_s": 0}}, "dns refresh_s must be positive"),
        ({"pools.en.addrs": ["localhost"]}, "not 'host:port'"),
        ({"pools.en.addrs": ["h:0"]}, "not 'host:port'"),
        ({"pools.en.addrs": ["h:70000"]}, "not 'host:port'"),
        ({"pools.en.addrs": [5]}, "not 'host:port'"),
        ({"pools.en.addrs": ["h:1", "h:1"]}, "twice"),
        ({"pools.en.max_inflight": -1}, "max_inflight"),
        ({"pools.en.max_inflight": "4"}, "max_inflight must be int"),
        ({"pools.en.port": 1}, "unknown key"),
        ({"routes.0.pool": "nope"}, "routes[0] names unknown pool 'nope'"),
        ({"routes.0.pool": KeyError}, "routes[0].pool"),
        ({"routes.0.lang": ""}, "not empty"),
        ({"routes.0.langs": "en"}, "unknown key"),
        ({"routes": {"lang": "en"}}, "array of tables"),
        ({"breaker": {"failure_threshold": 0}}, "failure_threshold"),
        ({"breaker": {"open_s": "10"}}, "breaker.open_s must be float"),
        ({"breaker": {"open_secs": 10}}, "unknown key"),
        ({"health": {"interval_s": 0}}, "interval_s"),
        ({"retry": {"max_attempts": 0}}, "max_attempts"),
        ({"retry": {"max_attempts": True}}, "max_attempts must be int"),
        ({"extra": 1}, "unknown key"),
    ],
)
def test_invalid_tables_raise_a_clear_config_error(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="routing") as err:
        RoutingTable.from_dict(mutate(change))
    assert message in str(err.value)


def test_unix_and_ipv6_addresses_are_accepted() -> None:
    t = RoutingTable.from_dict(mutate({"pools.en.addrs": ["unix:/tmp/asr.sock", "[::1]:50051"]}))
    assert t.pool("en").addrs == ("unix:/tmp/asr.sock", "[::1]:50051")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        RoutingTable.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("default_pool = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        RoutingTable.load(bad)
    invalid = tmp_path / "invalid.toml"
    invalid.write_text('default_pool = "x"\n[pools.y]\naddrs = ["h:1"]\n')
    with pytest.raises(ConfigError, match=r"invalid\.toml.*default_pool 'x'"):
        RoutingTable.load(invalid)
