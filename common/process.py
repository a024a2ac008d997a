"""Process-wide settings every gateway and service process takes before it loads numpy or starts a thread.

- One BLAS thread: OpenBLAS otherwise starts a thread per core and spins them after every small matrix
  product (Whisper's mel filter bank); that was half of a lone session's ASR CPU (docs/performance.md).
- Two glibc malloc arenas (`MALLOC_ARENA_MAX`, default 2 here): glibc gives each new thread its own
  arena, up to 8 per core, and keeps every arena's high-water mark. The ASR pools' decode threads came
  one by one over a soak, each with a fresh arena, and RSS climbed in steps (docs/performance.md#soak).
  An operator's `MALLOC_ARENA_MAX` in the environment wins (glibc reads it itself).
- Free heap given back (`trim`, every `TRIM_EVERY_S` in each gRPC service, common/service.py): glibc
  returns only the top of a heap to the kernel when memory is freed; the free pages in between stay
  in RSS. The ASR pools' batched decodes leave such holes, and over 2 h asr.multi's RSS grew 11.5 MB/h
  of memory `malloc_trim` gave back at once (docs/performance.md#soak). What the process still holds
  right after (`rss_bytes`) is its floor: common/service.py publishes it, since RSS read at any other
  moment swings with the work in flight (a tiny.en encoder call alone takes 54 MB per stream it batches).
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

_M_ARENA_MAX = -8  # glibc malloc.h
ARENAS = 2
TRIM_EVERY_S = 60.0


def tune() -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    mallopt = _libc("mallopt")
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, ARENAS)


def trim() -> bool:
    """Give the free pages of every malloc arena back to the kernel (glibc's `malloc_trim(0)`); blocks
    the arenas while it walks them (milliseconds for a few hundred MB), so call it off the event loop.
    True when memory was given back; False when there was none or this is not glibc."""
    malloc_trim = _libc("malloc_trim")
    return malloc_trim is not None and bool(malloc_trim(0))


def rss_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm); 0 where that is not readable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _libc(symbol: str) -> Any:
    """A glibc function, None elsewhere (musl has no mallopt or malloc_trim, macOS neither)."""
    if not sys.platform.startswith("linux"):
        return None
    # The symbols the process already has, libc's among them: no library search (find_library runs ldconfig).
    return getattr(ctypes.CDLL(None), symbol, None)
