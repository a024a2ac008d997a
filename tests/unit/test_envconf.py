"""The declarative environment loader (common/envconf.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from common.envconf import ConfigError, env_vars, load_env, nested, setting
from common.server import ServerConfig
from orchestrator.config import GatewayConfig
from services.asr.config import AsrConfig

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Inner:
    limit_ms: int = setting(10, env="LIMIT_MS")

    def __post_init__(self) -> None:
        if self.limit_ms < 0:
            raise ConfigError(f"LIMIT_MS={self.limit_ms} must be >= 0")


@dataclass(frozen=True)
class Plain:
    count: int = 0


@dataclass(frozen=True)
class Outer:
    name: str = setting("x", env="T_NAME")
    ratio: float = setting(0.5, env="T_RATIO")
    on: bool = setting(True, env="T_ON")
    seed: int | None = setting(None, env="T_SEED")
    langs: tuple[str, ...] = setting((), env="T_LANGS")
    path: Path = setting(Path("a"), env="T_PATH")
    fixed_s: float = 1.0  # not an operator setting
    inner: Inner = nested(Inner, prefix="T_")
    plain: Plain = nested(Plain, env={"count": "T_COUNT"})


def test_unset_keeps_defaults_and_each_type_reads_its_text() -> None:
    assert load_env(Outer, {}) == Outer()
    got = load_env(
        Outer,
        {
            "T_NAME": "y",
            "T_RATIO": " 0.25 ",
            "T_ON": "off",
            "T_SEED": "7",
            "T_LANGS": "en, de,,",
            "T_PATH": "/tmp/p",
            "T_LIMIT_MS": "3",
            "T_COUNT": "4",
        },
    )
    assert got == Outer("y", 0.25, False, 7, ("en", "de"), Path("/tmp/p"), 1.0, Inner(3), Plain(4))


def test_empty_text_is_empty_but_an_empty_number_is_unset() -> None:
    got = load_env(Outer, {"T_NAME": "", "T_RATIO": "", "T_SEED": " "})
    assert (got.name, got.ratio, got.seed) == ("", 0.5, None)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"T_RATIO": "half"}, "T_RATIO='half' is not a number"),
        ({"T_ON": "maybe"}, "T_ON='maybe' is not a boolean"),
        ({"T_SEED": "1.5"}, "T_SEED='1.5' is not an integer"),
        ({"T_LIMIT_MS": "-1"}, "LIMIT_MS=-1 must be >= 0"),
        ({"T_COUNT": "x"}, "T_COUNT='x' is not an integer"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_env(Outer, env)


def test_env_vars_lists_names_defaults_and_paths() -> None:
    names = {v.name: (v.default, v.path) for v in env_vars(Outer)}
    assert names["T_LIMIT_MS"] == (10, "inner.limit_ms")
    assert names["T_COUNT"] == (0, "plain.count")
    assert "fixed_s" not in {v.path for v in env_vars(Outer)}


def test_server_config_takes_the_prefix_of_its_service() -> None:
    got = load_env(ServerConfig, {"VAD_GRPC_PORT": "5001", "VAD_GRACE_S": "1.5"}, prefix="VAD_")
    assert (got.grpc_port, got.grace_s) == (5001, 1.5)
    with pytest.raises(ConfigError, match="X_GRPC_PORT=70000 must be a port number"):
        load_env(ServerConfig, {"X_GRPC_PORT": "70000"}, prefix="X_")


def test_asr_defaults_follow_the_engine() -> None:
    assert (load_env(AsrConfig, {}).model, load_env(AsrConfig, {}).min_partial_audio_ms) == ("tiny.en", 300)
    sphinx = load_env(AsrConfig, {"ASR_ENGINE": "sphinx"})
    assert (sphinx.model, sphinx.min_partial_audio_ms) == ("en-us", 60)
    assert load_env(AsrConfig, {"ASR_ENGINE": "sphinx", "ASR_MIN_PARTIAL_AUDIO_MS": "90"}).min_partial_audio_ms == 90
    with pytest.raises(ConfigError, match="ASR_CPU_THREADS=0"):
        load_env(AsrConfig, {"ASR_CPU_THREADS": "0"})


def test_gateway_config_nests_per_concern_and_derives_the_session_stages() -> None:
    cfg = load_env(
        GatewayConfig,
        {
            "VAD_ADDR": "127.0.0.1:1",
            "ASR_ADDR": "127.0.0.1:2, 127.0.0.1:3",
            "ENABLE_LID": "false",
            "LID_ADDR": "127.0.0.1:4",
            "FLUSH_IDLE_SEC": "1.5",
            "ASR_LINK_FRAME_MS": "40",
            "DRAIN_GRACE_SEC": "2",
        },
    )
    assert cfg.active_stages == ("vad", "asr")
    assert cfg.session.stages == ("vad", "asr") and cfg.session.deferred_transcripts
    assert (cfg.session.flush_idle_s, cfg.asr.link.frame_ms, cfg.listen.drain_grace_s) == (1.5, 40, 2.0)
    assert cfg.routing_table().pools[0].addrs == ("127.0.0.1:2", "127.0.0.1:3")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ASR_LINK_FRAME_MS": "30"}, "ASR_LINK_FRAME_MS must be 10, 20, 40 or 60"),
        ({"VAD_BATCH_MS": "30"}, "multiples of the 20 ms frame"),
        ({"MAX_FRAME_BYTES": "2000000"}, "MAX_FRAME_BYTES must not exceed WS_MAX_MESSAGE_BYTES"),
        ({"ENABLE_VAD": "sometimes"}, "ENABLE_VAD='sometimes' is not a boolean"),
    ],
)
def test_gateway_config_refuses_bad_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_env(GatewayConfig, env)
