"""Child-process probe of a GTCRN model: `python -m services.denoise.probe <model.onnx>` exits 0 when
sherpa-onnx loads and runs it (SPEC §9: sherpa-onnx exits 255 on a model it cannot use)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from services.denoise.engines import SAMPLE_RATE, GtcrnEngine


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m services.denoise.probe <model.onnx>", file=sys.stderr)
        return 2
    engine = GtcrnEngine(Path(argv[1]), num_threads=1)
    noise = np.random.default_rng(0).normal(0.0, 0.1, SAMPLE_RATE // 10).astype(np.float32)
    total = engine.process(noise).size + engine.flush().size
    if total != noise.size:
        print(f"gtcrn returned {total} samples for {noise.size}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
