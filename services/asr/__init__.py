"""ASR service: `asr.v1.Recognize/Stream`, Opus or PCM packets in, transcripts out (SPEC §3, §4)."""
