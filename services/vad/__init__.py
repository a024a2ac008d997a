"""VAD service: sherpa-onnx Silero voice activity detection over gRPC (SPEC §3); see docs/services/vad.md."""
