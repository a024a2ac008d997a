"""`python -m orchestrator` / `speechgw-gateway`: run the gateway from the environment (SPEC §5)."""

from __future__ import annotations

from common.service import main as run_process
from orchestrator.config import GatewayConfig
from orchestrator.gateway import serve_forever


def main() -> None:
    run_process("gateway", GatewayConfig, serve_forever)


if __name__ == "__main__":
    main()
