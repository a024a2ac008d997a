"""speechgw-mic's device source through PortAudio (`sounddevice`) and ALSA, on a virtual capture
device: ALSA's `file` plugin reading a raw PCM file over the `null` PCM (user space: no sound card or
kernel module). That device is not paced at real time (the `null` PCM never waits), so it checks
what the device path delivers, not its timing; speechgw-mic end to end uses the file stand-in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from speechgw_client import load_audio
from tests.poll import seconds

pytestmark = pytest.mark.integration

ALSA_CONF = Path("/usr/share/alsa/alsa.conf")  # Debian libasound2-data, a dependency of libportaudio2
ROOT = Path(__file__).resolve().parents[2]

READ_DEVICE = """
import asyncio, sys
from devtools.mic import DeviceSource

async def main(want: int) -> bytes:
    source, got = DeviceSource("virtual_mic", block_ms=20), b""
    async for block in source.blocks():
        got += block
        if len(got) >= want:
            source.stop()
    return got

sys.stdout.buffer.write(asyncio.run(main(int(sys.argv[1]))))
"""


def virtual_device(tmp_path: Path, raw: Path) -> dict[str, str]:
    conf = tmp_path / "asound.conf"
    conf.write_text(
        f'pcm.virtual_mic {{\n type file\n slave.pcm "null"\n file "/dev/null"\n infile "{raw}"\n format "raw"\n}}\n'
    )
    return {**os.environ, "ALSA_CONFIG_PATH": f"{ALSA_CONF}:{conf}", "PYTHONPATH": str(ROOT)}


def test_the_device_source_delivers_what_the_device_records(tmp_path: Path, clips: Path) -> None:
    pcm = load_audio(clips / "en" / "quick_brown_fox.wav")
    raw = tmp_path / "mic.raw"
    raw.write_bytes(pcm)
    done = subprocess.run(
        [sys.executable, "-c", READ_DEVICE, str(len(pcm))],
        env=virtual_device(tmp_path, raw),
        capture_output=True,
        timeout=seconds(60),
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout[: len(pcm)] == pcm  # every sample, in order, as PCM16 / 16 kHz / mono


def test_a_missing_device_is_reported_with_exit_status_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "devtools.mic", "--device", "no-such-device-anywhere"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds(60),
        check=False,
    )
    assert done.returncode == 2 and done.stderr.startswith("no usable input device: ")
