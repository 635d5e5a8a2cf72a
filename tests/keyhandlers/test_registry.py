"""The key table: Xen 4.22's keys registered with Xen's descriptions (keyhandlers/__init__.py)."""

from __future__ import annotations

import pytest

from keyhandlers import KEY_TABLE

# (key, description, diagnostic) as registered in Xen 4.22.
XEN_KEYS = [
    ("u", "dump NUMA info", True),  # common/numa.c:838
    ("g", "print grant table usage", True),  # common/grant_table.c:4461
    ("e", "dump evtchn info", True),  # common/event_channel.c:1810
    ("t", "display multi-cpu clock info", True),  # common/keyhandler.c:57
    ("a", "dump timer queues", True),  # common/timer.c:701
    ("A", "toggle alternative key handling", False),  # common/keyhandler.c:52
    ("n", "NMI statistics", True),  # arch/x86/nmi.c:604
    ("s", "dump softtsc stats", True),  # arch/x86/time.c:3062
    ("O", "toggle shadow audits", False),  # arch/x86/mm/shadow/common.c:140
]


@pytest.mark.parametrize(("k", "desc", "diag"), XEN_KEYS)
def test_registered_as_xen_registers_them(k, desc, diag):
    assert (KEY_TABLE[k].desc, KEY_TABLE[k].diagnostic) == (desc, diag)
