"""Performance counters (xen/common/perfc.c, xen/arch/x86/include/asm/perfc_defn.h).

Counters are per physical CPU, as in Xen: `perfc.cpu[cpu][idx] += 1` is the hot-path form
(plain Python lists, ~40 ns). `PERFSTATUS` counters survive a reset (key `P`). Subsystems
define their counters with `define()`; `p` prints them in definition order.
"""

from __future__ import annotations

from collections.abc import Callable

PERFC_MASK = 0xFFFFFFFF  # perfc_t is a 32-bit unsigned counter


class PerfCounters:
    """Named per-CPU counters, printed by key `p` in definition order."""

    def __init__(self, nr_cpus: int) -> None:
        self.nr_cpus = max(1, nr_cpus)
        self.names: list[str] = []  # Xen's descriptions
        self.status: list[bool] = []
        self.index: dict[str, int] = {}  # by Xen variable name (e.g. "shadow_fault")
        self.by_desc: dict[str, int] = {}
        self.cpu: list[list[int]] = [[] for _ in range(self.nr_cpus)]

    def define(self, var: str, desc: str, status: bool = False) -> int:
        """PERFCOUNTER(var, desc) / PERFSTATUS(var, desc); returns the counter index."""
        if var in self.index:
            return self.index[var]
        idx = len(self.names)
        self.names.append(desc)
        self.status.append(status)
        self.index[var] = idx
        self.by_desc[desc] = idx
        for c in self.cpu:
            c.append(0)
        return idx

    def incr(self, var: str, cpu: int = 0, n: int = 1) -> None:
        self.cpu[cpu % self.nr_cpus][self.index[var]] += n

    def total(self, key: str | int) -> int:
        """Sum over CPUs, by variable name, description or index (as `p` prints it)."""
        if isinstance(key, str):
            idx = self.index[key] if key in self.index else self.by_desc[key]
        else:
            idx = key
        return sum(c[idx] for c in self.cpu) & PERFC_MASK

    def reset(self) -> None:
        """perfc_reset(): zero every counter except the STATUS ones."""
        for idx, st in enumerate(self.status):
            if not st:
                for c in self.cpu:
                    c[idx] = 0

    def printall(self, out: Callable[[str], None]) -> None:
        """The body of perfc_printall(): one line per counter, CPU columns 4 per line."""
        for idx, desc in enumerate(self.names):
            total = self.total(idx)
            line = f"{desc:<32s}  TOTAL[{total:12d}]"
            if total:
                for k in range(self.nr_cpus):
                    if k > 0 and k % 4 == 0:
                        out(line)
                        line = " " * 53
                    line += f"  CPU{k:02d}[{self.cpu[k][idx] & PERFC_MASK:10d}]"
            out(line)


# Xen's own counters that this machine maintains, in perfc_defn.h order.
XEN_COUNTERS: tuple[tuple[str, str, bool], ...] = (
    ("guest_walk", "guest pagetable walks", False),
    ("shadow_alloc", "calls to shadow_alloc", False),
    ("shadow_alloc_tlbflush", "shadow_alloc flushed TLBs", False),
    ("shadow_alloc_count", "number of shadow pages in use", True),
    ("shadow_free", "calls to shadow_free", False),
    ("shadow_prealloc_1", "shadow recycles old shadows", False),
    ("shadow_prealloc_2", "shadow recycles in-use shadows", False),
    ("shadow_fault", "calls to shadow_fault", False),
    ("shadow_fault_bail_bad_gfn", "shadow_fault guest bad gfn", False),
    ("shadow_fault_bail_real_fault", "shadow_fault really guest fault", False),
    ("shadow_fault_emulate_write", "shadow_fault emulates a write", False),
    ("shadow_fault_fixed", "shadow_fault fixed fault", False),
    ("shadow_validate_gl1e_calls", "calls to shadow_validate_gl1e", False),
    ("shadow_validate_gl2e_calls", "calls to shadow_validate_gl2e", False),
    ("shadow_validate_gl3e_calls", "calls to shadow_validate_gl3e", False),
    ("shadow_validate_gl4e_calls", "calls to shadow_validate_gl4e", False),
    ("shadow_hash_lookups", "calls to shadow_hash_lookup", False),
    ("shadow_hash_lookup_head", "shadow hash hit in bucket head", False),
    ("shadow_hash_lookup_miss", "shadow hash misses", False),
    ("shadow_hash_inserts", "calls to shadow_hash_insert", False),
    ("shadow_hash_deletes", "calls to shadow_hash_delete", False),
    ("shadow_writeable", "shadow removes write access", False),
    ("shadow_writeable_bf", "shadow writeable brute-force", False),
    ("shadow_mappings", "shadow removes all mappings", False),
    ("shadow_mappings_bf", "shadow rm-mappings brute-force", False),
    ("shadow_unshadow", "shadow unshadows a page", False),
    ("shadow_unshadow_bf", "shadow unshadow brute-force", False),
    ("shadow_rm_write_flush_tlb", "shadow flush tlb by removing write perm", False),
    ("shadow_invlpg", "shadow emulates invlpg", False),
    # Not in Xen (its flushes are counted per cause, not per vCPU): every
    # UC_CTL_TLB_FLUSH the shadow code issues on a vCPU.
    ("shadow_vcpu_tlb_flush", "shadow vcpu tlb flushes", False),
)


def xen_perf_counters(nr_cpus: int) -> PerfCounters:
    """Counters for `nr_cpus` pCPUs with Xen's set defined (`machine.perfc`)."""
    pc = PerfCounters(nr_cpus)
    for var, desc, status in XEN_COUNTERS:
        pc.define(var, desc, status)
    return pc
