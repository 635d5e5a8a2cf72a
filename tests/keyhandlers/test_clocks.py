"""`t` and `s` (keyhandlers/clocks.py) against Xen 4.22's formats."""

from __future__ import annotations

import re

from guest_helpers import press


def test_t_clock_skew_accumulates(m):
    # keyhandler.c:450-455 "Synced stime skew: max=%luns avg=%luns samples=%u current=%luns"
    # and "Synced cycles skew: max=%lu avg=%lu samples=%u current=%lu".
    stime = r"Synced stime skew: max=(\d+)ns avg=(\d+)ns samples={n} current=(\d+)ns"
    cyc = r"Synced cycles skew: max=(\d+) avg=(\d+) samples={n} current=(\d+)"
    for n in (1, 2):
        out = press(m, "t")
        assert len(out) == 2
        a = re.fullmatch(stime.format(n=n), out[0])
        b = re.fullmatch(cyc.format(n=n), out[1])
        assert a and b
        assert int(a[1]) >= int(a[3]) and int(a[1]) >= int(a[2])


def test_s_softtsc(m):
    # time.c:3017 "TSC marked as reliable, warp = %lu (count=%lu)"; dom0 in default mode is
    # skipped (:3039-3041); "dom%u%s: mode=%d" (:3042) ",khz=%u" (:3046) ",inc=%u" (:3048).
    first = press(m, "s")
    second = press(m, "s")
    n = int(re.fullmatch(r"TSC marked as reliable, warp = 0 \(count=(\d+)\)", first[0])[1])
    assert second[0] == f"TSC marked as reliable, warp = 0 (count={n + 1})"
    assert first[1:] == ["dom1(hvm): mode=0,khz=2994374,inc=1"]
