"""Key `p`: Xen 4.22's x86 counter list, in Xen's order, formats of xen/common/perfc.c."""

from __future__ import annotations

import re

import pytest
from guest_helpers import create, new_machine, run_key, wait_for

from emu.perfc import PerfCounters, xen_perf_counters
from keyhandlers.perfc import perfc_printall, perfc_reset

# Excerpts of the list, copied from the RELEASE-4.22.0 headers (line numbers there).
ASM_HEAD = [  # xen/arch/x86/include/asm/perfc_defn.h:5-41
    "exceptions", "vmexits", "cause vector", "segmentation fixups", "apic timer interrupts",
    "domain page tlb flushes", "calls to mmuext_op", "mmuext ops", "calls to mmu_update",
    "page updates", "mmu_updates of writable pages", "calls to update_va_map", "page faults",
    "copy_user faults", "map_domain_page count", "writable pt emulations",
    "mmio ro emulations", "pre-exception fixed", "guest pagetable walks",
    "calls to shadow_alloc", "shadow_alloc flushed TLBs", "number of shadow pages in use",
    "calls to shadow_free", "shadow recycles old shadows", "shadow recycles in-use shadows",
    "shadow hit read-only linear map", "shadow A bit update", "shadow A&D bit update",
    "calls to shadow_fault", "shadow_fault fast path n/p",
]  # fmt: skip
ASM_TAIL = [  # xen/arch/x86/include/asm/perfc_defn.h:113-135
    "shadow OOS fixup adds", "shadow OOS fixup evictions", "shadow OOS unsyncs",
    "shadow OOS evictions", "shadow OOS resyncs", "realmode instructions emulated",
    "vmexits from realmode", "vmexits from Pause-Loop Detection", "IOMMU page table shatters",
    "IOMMU page table coalesces", "Bus Locks Detected", "domain crashes by Notify VM Exit",
]  # fmt: skip
COMMON_HEAD = [  # xen/include/xen/perfc_defn.h:8-17 (after the asm list, :5)
    "hypercalls", "calls from multicall", "#interrupts", "#IPIs", "RCU: idle_timer",
    "sched: timer",
]  # fmt: skip
LAST = "PG_need_flush tlb flushes"  # xen/include/xen/perfc_defn.h:91


def test_the_list_is_xens_x86_list_in_order():
    pc = xen_perf_counters(2)
    names = [e[0] for e in pc.entries]
    assert len(names) == 156  # 92 in asm/perfc_defn.h + 64 in xen/perfc_defn.h (credit, credit2)
    assert names[: len(ASM_HEAD)] == ASM_HEAD
    i = names.index("shadow OOS fixup adds")
    assert names[i : i + len(ASM_TAIL) + len(COMMON_HEAD)] == ASM_TAIL + COMMON_HEAD
    assert names[-1] == LAST
    assert "csched: delay" in names and "csched2: credit_reset" in names
    assert "shadow vcpu tlb flushes" not in names  # not a Xen counter
    # Array sizes: NR_hypercalls 64 (asm/config.h:39), vmexits MAX(76, 166 + 1), 0x20 vectors.
    sizes = {e[0]: e[3] for e in pc.entries if e[3] > 1}
    assert sizes == {"exceptions": 32, "vmexits": 167, "cause vector": 32, "hypercalls": 64}


def test_printall_format_arrays_and_status():
    """perfc.c:46 `%-32s  `, :55 `TOTAL[%12Lu]`, :62 `\\n%53s`, :63 `  CPU%02u[%10u]`; an
    array prints the sum of its elements per CPU (PERF_ARRAYS=n, perfc.c:89-104); a
    STATUS counter's sum is cast to perfc_t (perfc.c:53-54)."""
    pc = PerfCounters(5)
    pc.define("a", "an array", "PERFCOUNTER_ARRAY", 4)
    pc.define("s", "a status", "PERFSTATUS")
    pc.define("z", "zero")
    pc.incra("a", 1, cpu=0)
    pc.incra("a", 3, cpu=0)
    pc.incra("a", 2, cpu=4)
    pc.incra("a", 4, cpu=4)  # out of range: perfc_incra counts nothing
    pc.incr("s", cpu=0, n=2)
    pc.incr("s", cpu=1, n=-1)  # decremented on another CPU: 0xffffffff there
    lines: list[str] = []
    pc.printall(lines.append)
    cols = "  CPU00[         2]  CPU01[         0]  CPU02[         0]  CPU03[         0]"
    assert lines == [
        f"{'an array':<32s}  TOTAL[{3:12d}]{cols}",
        " " * 53 + "  CPU04[         1]",
        f"{'a status':<32s}  TOTAL[{1:12d}]  CPU00[         2]  CPU01[4294967295]"
        "  CPU02[         0]  CPU03[         0]",
        " " * 53 + "  CPU04[         0]",
        f"{'zero':<32s}  TOTAL[{0:12d}]",
    ]
    pc.reset()
    assert pc.total("an array") == 0 and pc.total("a status") == 1


@pytest.mark.timeout(60)
def test_p_counts_what_the_guest_really_does():
    m = new_machine()
    try:
        dom = create(m, "pc", "touch:pages=64,write=1")
        assert wait_for(lambda: m.perfc.total("calls to shadow_fault") > 64)
        lines = run_key(perfc_printall, m)
        assert re.fullmatch(r"Xen performance counters SHOW  \(now = \d+\)", lines[0])
        assert len(lines) >= 1 + 156
        rows = {ln[:32].rstrip(): ln for ln in lines[1:] if not ln.startswith(" " * 53)}
        for name in ("guest pagetable walks", "calls to shadow_fault", "calls to shadow_alloc",
                     "calls to get_shadow_status", "calls to shadow_hash_lookup",
                     "shadow_fault fixed fault",
                     # sched/core.c:2685, :2426, credit2.c:3595 (emu/cpu/sched.py)
                     "sched: runs through scheduler", "sched: context switches",
                     "sched: specific scheduler"):  # fmt: skip
            assert int(re.search(r"TOTAL\[ *(\d+)\]", rows[name]).group(1)) > 0, name
        # Paths this machine does not have stay 0 (docs/differences.md).
        for name in ("vmexits", "exceptions", "page faults", "shadow A bit update",
                     "shadow_fault fast path n/p", "shadow OOS unsyncs", "#IPIs"):  # fmt: skip
            assert rows[name] == f"{name:<32s}  TOTAL[{0:12d}]"
        # Every hypercall the hypervisor handled, counted by number (hvm/hypercall.c:193).
        with m.quiesce(dom):
            calls = sum(v.stats["hypercalls"] for v in dom.vcpus)
            assert m.perfc.total("hypercalls") == calls
        reset = run_key(perfc_reset, m)
        assert re.fullmatch(r"Xen performance counters RESET \(now = \d+\)", reset[0])
    finally:
        m.shutdown()
