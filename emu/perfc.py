"""Performance counters (xen/common/perfc.c, the list in emu/perfc_defn.py).

Counters are per physical CPU, as in Xen: `perfc.cpu[cpu][perfc.index[var]] += 1` is the
hot-path form (plain Python lists, ~40 ns); an array counter takes `nr` consecutive slots
from its index (`incra`). `PERFSTATUS` counters survive a reset (key `P`). Every counter of
Xen's x86 list is defined, in Xen's order; the ones whose code paths this machine does not
have stay 0 (docs/differences.md).
"""

from __future__ import annotations

from collections.abc import Callable

PERFC_MASK = 0xFFFFFFFF  # perfc_t is a 32-bit unsigned int (xen/include/xen/perfc.h:51)

SINGLE, ARRAY, S_SINGLE, S_ARRAY = (
    "PERFCOUNTER",
    "PERFCOUNTER_ARRAY",
    "PERFSTATUS",
    "PERFSTATUS_ARRAY",
)


class PerfCounters:
    """Named per-CPU counters, printed by key `p` in definition order."""

    def __init__(self, nr_cpus: int) -> None:
        self.nr_cpus = max(1, nr_cpus)
        self.entries: list[tuple[str, str, int, int]] = []  # (desc, kind, first slot, nr)
        self.index: dict[str, int] = {}  # Xen variable name -> first slot
        self.by_desc: dict[str, int] = {}  # description -> entry number
        self.by_var: dict[str, int] = {}  # Xen variable name -> entry number
        self.cpu: list[list[int]] = [[] for _ in range(self.nr_cpus)]

    def define(self, var: str, desc: str, kind: str = SINGLE, nr: int = 0) -> int:
        """PERFCOUNTER(var, desc) and friends; returns the first slot."""
        if var in self.index:
            return self.index[var]
        slot = len(self.cpu[0])
        n = nr if kind in (ARRAY, S_ARRAY) else 1
        self.by_desc[desc] = self.by_var[var] = len(self.entries)
        self.entries.append((desc, kind, slot, n))
        self.index[var] = slot
        for c in self.cpu:
            c.extend([0] * n)
        return slot

    def incr(self, var: str, cpu: int = 0, n: int = 1) -> None:
        self.cpu[cpu % self.nr_cpus][self.index[var]] += n

    def incra(self, var: str, idx: int, cpu: int = 0) -> None:
        """perfc_incra(): element `idx` of an array counter (out of range: not counted)."""
        if 0 <= idx < self.entries[self.by_var[var]][3]:
            self.cpu[cpu % self.nr_cpus][self.index[var] + idx] += 1

    def _entry(self, key: str | int) -> tuple[str, str, int, int]:
        if isinstance(key, int):
            return self.entries[key]
        if key in self.by_var:
            return self.entries[self.by_var[key]]
        return self.entries[self.by_desc[key]]

    def cpu_value(self, key: str | int, cpu: int) -> int:
        """One CPU's figure as `p` prints it (an array: the sum of its elements)."""
        _, kind, slot, n = self._entry(key)
        c = self.cpu[cpu]
        if n == 1:
            return c[slot] & PERFC_MASK
        s = sum(v & PERFC_MASK for v in c[slot : slot + n])
        return s & PERFC_MASK if kind == S_ARRAY else s

    def total(self, key: str | int) -> int:
        """Sum over CPUs, by variable name, description or entry number, as `p` prints it."""
        _, kind, _, _ = self._entry(key)
        s = sum(self.cpu_value(key, k) for k in range(self.nr_cpus))
        return s & PERFC_MASK if kind in (S_SINGLE, S_ARRAY) else s

    def reset(self) -> None:
        """perfc_reset(): zero every counter except the STATUS ones."""
        for _, kind, slot, n in self.entries:
            if kind in (SINGLE, ARRAY):
                for c in self.cpu:
                    c[slot : slot + n] = [0] * n

    def printall(self, out: Callable[[str], None]) -> None:
        """The body of perfc_printall() (xen/common/perfc.c:36-108, PERF_ARRAYS=n): one
        line per counter, `%-32s  TOTAL[%12Lu]`, then CPU columns, 4 per line."""
        for i, (desc, *_) in enumerate(self.entries):
            total = self.total(i)
            line = f"{desc:<32s}  TOTAL[{total:12d}]"
            if total:
                for k in range(self.nr_cpus):
                    if k > 0 and k % 4 == 0:
                        out(line)
                        line = " " * 53
                    line += f"  CPU{k:02d}[{self.cpu_value(i, k):10d}]"
            out(line)


def xen_perf_counters(nr_cpus: int) -> PerfCounters:
    """Counters for `nr_cpus` pCPUs with Xen's x86 list defined (`machine.perfc`)."""
    from emu.perfc_defn import PERFC_DEFN

    pc = PerfCounters(nr_cpus)
    for var, desc, kind, nr in PERFC_DEFN:
        pc.define(var, desc, kind, nr)
    return pc
