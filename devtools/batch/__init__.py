"""`speechgw-batch`: files, folders and lists of audio or video transcribed through the gateway into
SRT, WebVTT and JSON (docs/clients.md#batch-jobs)."""
