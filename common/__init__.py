"""Pieces every service process shares: env parsing, JSON logs, the gRPC + HTTP server runner."""
