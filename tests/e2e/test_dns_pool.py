"""An ASR pool that follows DNS: three real ASR processes on 127.0.0.2-4 behind one name of a hosts
file, a real gateway that resolves it, sessions spread over the three; a member taken out of the name
gets no new session and one put back does (docs/routing.md#members-from-dns)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.client import stream_pcm
from devtools.launcher import RunningService, launch
from speechgw_client import load_audio
from tests.poll import seconds, wait_for

pytestmark = pytest.mark.e2e

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
NAME = "asr.pool.test"


def free_port_on(hosts: tuple[str, ...]) -> int:
    """A port free on every one of `hosts` (a headless Service's members share theirs)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            with contextlib.ExitStack() as held:
                for host in hosts[1:]:
                    s = held.enter_context(socket.socket())
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


def metric(base: str, name: str, labels: str = "") -> float:
    """The sum of a metric's samples on a /metrics page (with `labels` in the sample's label set)."""
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def dns_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[RunningService], str]]:
    work = tmp_path_factory.mktemp("dns")
    port = free_port_on(HOSTS)
    hosts_file = work / "hosts"
    hosts_file.write_text("".join(f"{h} {NAME}\n" for h in HOSTS))
    routing = work / "routing.toml"
    routing.write_text(
        f'default_pool = "en"\n[pools.en]\ndns = ["{NAME}:{port}"]\n'
        f'[dns]\nrefresh_s = 0.2\nhosts_file = "{hosts_file}"\n[health]\ninterval_s = 0.2\n'
    )
    asr_env = {"ASR_ENGINE": "sphinx", "ASR_GRPC_PORT": str(port), "ASR_HTTP_PORT": "0", "LOG_LEVEL": "WARNING"}
    members: list[RunningService] = []
    gateway = None
    try:
        for host in HOSTS:
            members.append(launch("asr", env={**asr_env, "ASR_HOST": host}, timeout_s=120))
        gateway_env = {
            "AUTH_MODE": "off",
            "GATEWAY_PORT": "0",
            "ROUTING_FILE": str(routing),
            "ASR_PROVISIONAL": "false",
            "JOBS_DB": str(work / "jobs.sqlite"),
            "LOG_LEVEL": "WARNING",
        }
        gateway = launch("gateway", [sys.executable, "-m", "orchestrator"], env=gateway_env)
        yield hosts_file, members, gateway.http_base
    finally:
        if gateway is not None:
            gateway.stop()
        for member in members:
            member.stop()


async def _sessions(url: str, pcm: bytes, n: int) -> None:
    results = await asyncio.gather(
        *(stream_pcm(url, pcm, speed=0, token="", start={"hints": {"user_lang_pref": "en"}}) for _ in range(n))
    )
    for result in results:
        assert result.ok, result.events
        assert " ".join(f["text"] for f in result.of_type("asr_final")).strip()


def audio_per_member(members: list[RunningService]) -> list[float]:
    return [metric(m.http_base, "asr_audio_seconds_total") for m in members]


def test_sessions_spread_over_the_names_members_and_follow_its_changes(
    dns_pool: tuple[Path, list[RunningService], str], clips: Path
) -> None:
    hosts_file, members, base = dns_pool
    url = base.replace("http", "ws", 1) + "/ws/stream"
    pcm = load_audio(clips / "en" / "hello_world.wav")
    assert metric(base, "orchestrator_asr_pool_members", 'pool="en"') == 3

    # Three sessions at once: least in-flight first, so one each.
    asyncio.run(_sessions(url, pcm, 3))
    served = audio_per_member(members)
    assert all(s > 0 for s in served), served

    # 127.0.0.4 leaves the name: drained from the pool, no new session reaches it.
    hosts_file.write_text("".join(f"{h} {NAME}\n" for h in HOSTS[:2]))
    wait_for(lambda: metric(base, "orchestrator_asr_pool_members", 'pool="en"') == 2, seconds(10), "member drained")
    asyncio.run(_sessions(url, pcm, 4))
    after = audio_per_member(members)
    assert after[2] == served[2], "the removed member got a session"
    assert after[0] > served[0] and after[1] > served[1]

    # It comes back: sessions reach it again.
    hosts_file.write_text("".join(f"{h} {NAME}\n" for h in HOSTS))
    wait_for(lambda: metric(base, "orchestrator_asr_pool_members", 'pool="en"') == 3, seconds(10), "member back")
    asyncio.run(_sessions(url, pcm, 3))
    assert audio_per_member(members)[2] > after[2]
