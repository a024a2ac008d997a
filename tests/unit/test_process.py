"""common.process.tune: the glibc arena cap every stack process takes at import (docs/performance.md#soak)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Eight threads malloc at once, then glibc's own report counts the arenas ("<heap nr=...>").
_PROBE = r"""
import ctypes, os, sys, tempfile, threading
if sys.argv[1] == "tune":
    from common import process
    process.tune()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.fdopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fflush.argtypes = [ctypes.c_void_p]
gate = threading.Barrier(8)
def work():
    gate.wait()
    kept = [libc.malloc(1000) for _ in range(100)]
    gate.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with tempfile.TemporaryFile() as f:
    fp = libc.fdopen(os.dup(f.fileno()), b"w")
    libc.malloc_info(0, fp)
    libc.fflush(fp)
    f.seek(0)
    print(f.read().decode().count("<heap nr="))
"""


def _arenas(mode: str, **env: str) -> int:
    full = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | {"PYTHONPATH": str(ROOT)} | env
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=full, cwd=ROOT, check=True, capture_output=True)
    return int(out.stdout)


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")


def test_eight_threads_share_two_arenas_after_tune() -> None:
    assert _arenas("plain") > 2  # without it glibc gives the threads arenas of their own
    assert _arenas("tune") == 2


def test_an_operators_malloc_arena_max_wins() -> None:
    assert _arenas("tune", MALLOC_ARENA_MAX="4") == 4


# 64 MB in 16 kB blocks (below glibc's mmap threshold, so on the heap), every other one freed: the holes
# are free memory glibc keeps in RSS; malloc_trim gives their pages back.
_HOLES = r"""
import ctypes, sys
from common import process
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
blocks = [libc.malloc(16384) for _ in range(4096)]
for b in blocks:
    libc.memset(b, 1, 16384)
full = rss_mb()
for b in blocks[::2]:
    libc.free(b)
held = rss_mb()
gave = process.trim()
print(full - held, held - rss_mb(), gave)
"""


def test_trim_gives_the_pages_of_freed_blocks_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _HOLES],
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    kept_free, given_back, gave = out.stdout.split()
    assert float(kept_free) < 4  # free() alone leaves the 32 MB of holes in RSS
    assert float(given_back) > 24
    assert gave == b"True"


# A fresh interpreter (the test process's heap may already hold free resident pages a block would
# reuse): RSS by rss_bytes against psutil's, before and after 32 MB of new pages are touched.
_RSS = r"""
import mmap, psutil
from common.process import rss_bytes
me = psutil.Process()
before = rss_bytes()
block = mmap.mmap(-1, 32 * 2**20)  # a new anonymous mapping: its pages are resident once touched
for i in range(0, len(block), 4096):
    block[i] = 1
print(before, rss_bytes(), me.memory_info().rss)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="Linux's /proc")
def test_rss_bytes_is_the_resident_memory_the_kernel_reports() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _RSS],
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    before, after, kernel = (int(v) for v in out.stdout.split())
    assert abs(after - kernel) < 4 * 2**20
    assert after - before > 28 * 2**20
