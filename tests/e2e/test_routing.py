"""LID picks the ASR pool (SPEC §4): Chinese lands on the multilingual pool, English on the English
one, and `hints.user_lang_pref` overrides LID. The stack is the default one of `make run`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.client import stream_pcm
from devtools.stack import DEFAULT_SERVICES, Stack
from speechgw_client import StreamResult, load_audio
from tests.schemas import check_event

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("full")
    env = {
        "LOG_LEVEL": "WARNING",
    }
    with Stack(DEFAULT_SERVICES, env=env, workdir=work) as stack:
        yield stack


def run(stack: Stack, clip: Path, **hints: str) -> StreamResult:
    result = asyncio.run(
        stream_pcm(stack.url, load_audio(clip), speed=0, start={"return": ["lid", "asr", "record_url"], "hints": hints})
    )
    for event in result.events:
        check_event(event)
    assert result.ok, result.events
    return result


@pytest.mark.parametrize(
    ("clip", "lang", "pool", "expect"),
    [
        ("zh/nihao_shijie.wav", "zh", "multi", "你好"),
        ("en/hello_world.wav", "en", "en", "hello"),
    ],
)
def test_lid_routes_each_language_to_its_pool(
    full_stack: Stack, clips: Path, clip: str, lang: str, pool: str, expect: str
) -> None:
    result = run(full_stack, clips / clip)
    (lid,) = result.of_type("lid")
    assert (lid["lang"], lid["source"], lid["pool"]) == (lang, "lid", pool)
    assert lid["score"] > 0.5
    finals = result.of_type("asr_final")
    assert finals and all(f["lang"] == lang for f in finals)
    assert expect in " ".join(f["text"] for f in finals).lower()
    kinds = [e["type"] for e in result.events]
    assert kinds.index("lid") < kinds.index("asr_final")  # held audio replayed after routing


def test_language_preference_overrides_lid(full_stack: Stack, clips: Path) -> None:
    result = run(full_stack, clips / "zh" / "nihao_shijie.wav", user_lang_pref="en")
    (lid,) = result.of_type("lid")
    assert (lid["lang"], lid["source"], lid["pool"], lid["score"]) == ("en", "hint", "en", 1.0)
    assert all(f["lang"] == "en" for f in result.of_type("asr_final"))
