"""Child-process model probe: `python -m services.vad.probe` loads and runs the configured model.

Exit 0 with a JSON `{"ok": true}` line when the model works. sherpa-onnx may kill this process
(exit 255) on a bad model; the parent only reads the exit status (SPEC §9).
"""

from __future__ import annotations

import json
import sys

from common.envconf import ConfigError, load_env
from services.vad.config import VadConfig
from services.vad.detector import exercise, make_detector, model_path


def main() -> int:
    try:
        config = load_env(VadConfig)
        path = model_path(config)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not a file")
        detector = make_detector(config)
        exercise(detector, config, seconds=0.5)
    except (ConfigError, OSError, RuntimeError) as exc:
        print(json.dumps({"ok": False, "error": str(exc)}), file=sys.stderr)
        return 1
    print(json.dumps({"ok": True, "model": str(path), "window_samples": config.window_samples}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
