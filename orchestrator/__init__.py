"""The gateway/orchestrator: one WebSocket in, gRPC stages behind, one event stream out (SPEC §1)."""
