"""`n` (keyhandlers/nmi.py) against Xen 4.22's do_nmi_stats() format."""

from __future__ import annotations

from guest_helpers import press


def test_n_nmi_stats(m):
    # nmi.c:578-579 "CPU\tNMI" then "%3u\t%3u"; :590 "%pv: NMI neither pending nor masked"
    assert press(m, "n") == [
        "CPU\tNMI",
        "  0\t  0",
        "  1\t  0",
        "d0v0: NMI neither pending nor masked",
    ]
