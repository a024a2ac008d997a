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
