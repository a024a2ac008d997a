"""Compress service: archives a flow's PCM to a local directory or S3 and answers an absolute record URL
(SPEC §3, §4). `python -m services.compress` starts it; docs/services/compress.md and docs/storage.md."""
