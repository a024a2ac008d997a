"""`python -m orchestrator` / `speechgw-gateway`: run the gateway from the environment (SPEC §5)."""

from __future__ import annotations

import os

from common.logs import setup_logging
from common.server import run_main
from orchestrator.config import GatewayConfig
from orchestrator.gateway import serve_forever


def main() -> None:
    setup_logging(os.environ.get("LOG_LEVEL", "INFO"))
    config = GatewayConfig.from_env(os.environ)
    run_main(lambda: serve_forever(config))


if __name__ == "__main__":
    main()
