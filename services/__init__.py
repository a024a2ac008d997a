"""The stage services, one folder and one process each (SPEC §3, §4)."""

from common import process

# Before numpy loads and before any thread starts (`python -m services.<name>` runs this first).
process.tune()
