"""`u` (keyhandlers/numa.py) against Xen 4.22's dump_numa() format."""

from __future__ import annotations

import re

from guest_helpers import press


def test_u_numa(m):
    out = press(m, "u")
    # numa.c:765 "'%c' pressed -> dumping numa info (now = %"PRI_stime")"
    assert re.fullmatch(r"'u' pressed -> dumping numa info \(now = \d+\)", out[0])
    # numa.c:770 "NODE%u start->%lu size->%lu free->%lu": the faked node 0 spans all frames
    # (numa.c:653-670); its free pages are the heap's.
    free = int(re.fullmatch(rf"NODE0 start->0 size->{m.ram.nr_frames} free->(\d+)", out[1])[1])
    assert abs(free - m.free_pages()) < 4096  # the guest may still be touching pages
    assert out[2] == "CPU0...1 -> NODE0"  # numa.c:797 "CPU%u...%u -> NODE%d"
    assert out[3] == "Memory location of each domain:"  # numa.c:805
    d0 = m.domains[0]
    # numa.c:811 "%pd (total: %u):" (domain_tot_pages), :825 "    Node %u: %u"
    assert out[4:6] == [f"d0 (total: {d0.tot_pages}):", f"    Node 0: {d0.tot_pages}"]
    assert re.fullmatch(r"d1 \(total: \d+\):", out[6]) and out[7].startswith("    Node 0: ")
