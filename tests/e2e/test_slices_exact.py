"""Time slices never repeat a guest instruction's store.

Unicorn's emu_stop() from another thread can land after a store but before the instruction
retires, so the store runs again on resume. The scheduler therefore never stops a vCPU from
another thread: it sets the vCPU's flag, and the native block hook (emu/cpu/blockhook.py) or a
Python hook stops the run on the vCPU's own thread. A guest that increments a memory word
millions of times, across hundreds of slices and with another busy domain competing for the
pCPUs, must end with the exact count (tests/test_slices_native.py does it over 3,000+
flag-ended slices).
"""

from __future__ import annotations

import pytest
from console_hosts import host_only
from guest_helpers import REPORT_EQUAL

from xenconsole.expect import Console
from xenconsole.testing import serve

# The programs and configs these tests write are named by host path: dom0 sees the host.
HOST_FILES = ("--dom0-root", "/")

N = 3_000_000

COUNTER = (
    f"""
    mov rcx, {N}
lp:
    add qword ptr [0x100000], 1
    dec rcx
    jnz lp
    mov rax, qword ptr [0x100000]
    mov rbx, {N}
"""
    + REPORT_EQUAL
)

SPIN = """
spin:
    add qword ptr [0x100000], 1
    jmp spin
"""


@pytest.mark.timeout(180)
def test_counter_guest_is_exact_across_slices(tmp_path):
    counter = tmp_path / "counter.S"
    counter.write_text(COUNTER)
    spin = tmp_path / "spin.S"
    spin.write_text(SPIN)
    with serve(*HOST_FILES, *host_only(tmp_path)) as host, Console.open(host.urls["tcp"]) as con:
        for name, prog in (("spin", spin), ("count", counter)):
            args = f"'name=\"{name}\"' memory=16 'workload=\"asm:{prog}\"'"
            con.run(f"xl create /dev/null {args}", check=True)
        i = con.expect([r"\(d2\) ok\r\n", r"\(d2\) N\r\n"], timeout=150)
        assert i == 0, "the counter guest saw a store run twice"
