"""Deferred transcripts: the durable job store, the runner that transcribes archived recordings, the HTTP
view; the SRT and WebVTT writers."""
