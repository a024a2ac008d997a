"""Denoise service (SPEC §1, §3, §4): PCM16 frames in, the same timeline's denoised frames out."""
