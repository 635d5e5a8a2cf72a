"""`a` (keyhandlers/timers.py) against Xen 4.22's dump_timerq() format."""

from __future__ import annotations

import re

from guest_helpers import press


def test_a_timer_queues(m):
    out = press(m, "a")
    # timer.c:680 "Dumping timer queues:", :686 "CPU%02d:", one per online CPU.
    assert out[0] == "Dumping timer queues:"
    cpus = [ln for ln in out if re.fullmatch(r"CPU\d\d:", ln)]
    assert cpus == ["CPU00:", "CPU01:"]
    for ln in out[1:]:
        assert ln in cpus or re.fullmatch(
            r"  ex= *-?\d+us cb=vcpu_singleshot_timer_fn\(d\d+v\d+\)", ln
        )
