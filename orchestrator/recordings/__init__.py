"""The gateway's own spool of session audio, for when the archive stage fails (docs/storage.md)."""
