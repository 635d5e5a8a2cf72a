"""`t` display multi-cpu clock info (xen/common/keyhandler.c:394-459 read_clocks(), table at
:57) and `s` dump softtsc stats (xen/arch/x86/time.c:3010-3058 dump_softtsc(), :3062).

Every pCPU of this machine reads the one host clock (NOW() is monotonic_ns since power-on;
the TSC runs at cpu_khz from it), so the skews are the time between the CPUs' reads, taken
in turn by the key's thread (docs/differences.md), and the TSC never warps.
"""

from __future__ import annotations

import time

from keyhandlers import keyhandler
from keyhandlers._state import key_state

CPU_KHZ = 2994374  # `xl info` cpu_mhz 2994.374


def _cycles(machine) -> int:
    """get_cycles(): the TSC, cpu_khz ticks per millisecond of the host clock."""
    return time.monotonic_ns() * CPU_KHZ // 1_000_000


@keyhandler("t", "display multi-cpu clock info", diagnostic=True)
def read_clocks(machine, out, args) -> None:
    st = key_state(machine, "t", sumdif_stime=0, maxdif_stime=0, sumdif_cycles=0,
                   maxdif_cycles=0, count=0)  # fmt: skip
    stimes, cycles = [], []
    for _cpu in range(machine.host.cpus):
        stimes.append(machine.now())
        cycles.append(_cycles(machine))
    dif_stime = max(stimes) - min(stimes)
    dif_cycles = max(cycles) - min(cycles)
    st["maxdif_stime"] = max(st["maxdif_stime"], dif_stime)
    st["sumdif_stime"] += dif_stime
    st["maxdif_cycles"] = max(st["maxdif_cycles"], dif_cycles)
    st["sumdif_cycles"] += dif_cycles
    st["count"] += 1
    n = st["count"]
    out(
        f"Synced stime skew: max={st['maxdif_stime']}ns avg={st['sumdif_stime'] // n}ns "
        f"samples={n} current={dif_stime}ns"
    )
    out(
        f"Synced cycles skew: max={st['maxdif_cycles']} avg={st['sumdif_cycles'] // n} "
        f"samples={n} current={dif_cycles}"
    )


@keyhandler("s", "dump softtsc stats", diagnostic=True)
def dump_softtsc(machine, out, args) -> None:
    st = key_state(machine, "s", tsc_check_count=0, tsc_max_warp=0)
    # tsc_check_reliability() (time.c): one more warp check; one clock cannot go backwards.
    st["tsc_check_count"] += 1
    # An invariant TSC (CPUID 80000007 EDX[8]) is marked reliable (time.c:3016-3018).
    out(f"TSC marked as reliable, warp = {st['tsc_max_warp']} (count={st['tsc_check_count']})")
    count = 0
    with machine.lock:
        doms = machine.domain_list()
    for dom in doms:
        if dom.domid == 0:
            continue  # the hardware domain in the default TSC mode is skipped
        # tsc_set_info(): default mode, the host's khz, incarnation 1. The vtsc_offset
        # (",ofs=") it also records is not kept here (docs/differences.md).
        out(f"dom{dom.domid}{'(hvm)' if dom.is_hvm else ''}: mode=0,khz={CPU_KHZ},inc=1")
        count += 1
    if not count:
        out("No domains have emulated TSC")
