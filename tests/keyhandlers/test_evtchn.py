"""`e` (keyhandlers/evtchn.py) against Xen 4.22's dump_evtchn_info() format."""

from __future__ import annotations

from guest_helpers import press


def test_e_event_channels(m):
    out = press(m, "e")
    # event_channel.c:1803 "'%c' pressed -> dumping event-channel info"; :1744-1746 header.
    assert out == [
        "'e' pressed -> dumping event-channel info",
        "Event channel information for domain 0:",
        "Polling vCPUs: {}",
        "    port [p/m/s]",
        "    (dom0 runs no kernel here: its event channels are not modelled)",
        "Event channel information for domain 1:",
        "Polling vCPUs: {}",
        "    port [p/m/s]",
    ]
