"""The gateway/orchestrator: one WebSocket in, gRPC stages behind, one event stream out (SPEC §1)."""

from common import process

# Before numpy loads and before any thread starts (`python -m services.<name>` runs this first).
process.tune()
