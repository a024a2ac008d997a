"""Spoken language identification over the first seconds of a flow, answering early (SPEC §1, §4)."""
