"""The stage services, one folder and one process each (SPEC §3, §4)."""

import os

# One BLAS thread per process, set before numpy loads OpenBLAS (`python -m services.<name>` runs this
# first). OpenBLAS otherwise starts a thread per core and spins them after every small matrix product
# (Whisper's mel filter bank): that was half of a lone session's ASR CPU (docs/performance.md).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
