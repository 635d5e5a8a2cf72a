"""`r` (keyhandlers/runq.py): core masks against the topology `xl info` reports."""

from __future__ import annotations

from guest_helpers import press


def test_r_core_masks_follow_the_topology_xl_info_reports(m):
    """credit2.c:3809 "CPU[%02d] runq=%d, sibling={%*pbl}, core={%*pbl}" prints
    cpu_sibling_mask and cpu_core_mask; `xl info` says 1 socket, 2 cores, 1 thread per core
    (xenconsole/dom0/xl_info.py), so the siblings are the CPU itself and the core mask is
    the whole socket."""
    out = press(m, "r")
    cpu_lines = [ln for ln in out if ln.startswith("CPU[") and "runq=" in ln]
    assert cpu_lines == [
        "CPU[00] runq=0, sibling={0}, core={0-1}",
        "CPU[01] runq=0, sibling={1}, core={0-1}",
    ]
