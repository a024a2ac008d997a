"""Thin gRPC adapters, one per stage: audio blocks in, stage events out (STYLE §2)."""
