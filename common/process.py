"""Process-wide settings every gateway and service process takes before it loads numpy or starts a thread.

- One BLAS thread: OpenBLAS otherwise starts a thread per core and spins them after every small matrix
  product (Whisper's mel filter bank); that was half of a lone session's ASR CPU (docs/performance.md).
- Two glibc malloc arenas (`MALLOC_ARENA_MAX`, default 2 here): glibc gives each new thread its own
  arena, up to 8 per core, and keeps every arena's high-water mark. The ASR pools' decode threads came
  one by one over a soak, each with a fresh arena, and RSS climbed in steps (docs/performance.md#soak).
  An operator's `MALLOC_ARENA_MAX` in the environment wins (glibc reads it itself).
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_ARENA_MAX = -8  # glibc malloc.h
ARENAS = 2


def tune() -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    if not sys.platform.startswith("linux"):
        return
    # The symbols the process already has, libc's among them: no library search (find_library runs ldconfig).
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc only; musl has none
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, ARENAS)
