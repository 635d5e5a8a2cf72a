"""The guest access record this emulator adds to Xen: `record` (per-frame bits written by the
shadow fault path) and `scan` (per-domain views of it, for keys `U` and `Z`).
"""
