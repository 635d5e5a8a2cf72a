"""The accessed-page scan: which of a domain's pages has its guest touched (key `U`, `Z`).

    from emu.scan import scan_domain
    s = scan_domain(machine, dom, 0x100, 0x3FFF)     # gfns 0x100..0x3fff inclusive
    s.accessed, s.dirty, s.window, s.first_touch_ns  # numpy arrays, one entry per gfn
    s.pages, s.nr_accessed, s.nr_dirty, s.nr_window, s.nr_never
    s.heat()                                          # the 64-column heat line of `U`

Two sources are combined, both vectorised (never a Python loop per page):

* the per-MFN access record (`machine.access`, emu/access.py), written by the shadow fault
  path whenever it sets a guest A (and D) bit: lifetime `accessed`/`written`,
  `first_touch_ns`, and `window` (accessed since the last `Z`, including A bits of shadow
  entries that have since been removed);
* the A and D bits of the domain's shadow L1 entries, which the (emulated) hardware walker
  sets for accesses through present shadows. After a `Z` cleared them, that is the only
  trace of an access that did not fault. A present shadow L1 entry maps one of the
  domain's own frames; its gfn comes from the M2P and must map back through the P2M.

A gfn counts only if the domain owns it (a valid P2M entry): holes, ballooned-out gfns and
gfns beyond the P2M are never accessed. The scan reads; it changes no record, no shadow
entry and no guest entry (the hypervisor's reads of its own tables are not guest accesses).

Real Xen keeps none of this (xen.md §4.11): the per-frame record is this emulator's addition,
made exactly where Xen's `sh_page_fault()` sets guest A/D bits.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from emu.access import access_of

_PTE_P, _PTE_A, _PTE_D = 0x1, 0x20, 0x40
_PTE_ADDR = np.uint64(0x000FFFFFFFFFF000)
INVALID_MFN = np.uint64((1 << 64) - 1)
MAX_GFN = (1 << 40) - 1  # 52-bit guest-physical addresses
HEAT_COLUMNS = 64
HEAT_CHARS = " .:o#"


class ScanError(ValueError):
    """The domain or range cannot be scanned (one line for the user)."""


@dataclass
class DomainScan:
    """One domain's scan over gfns `first`..`last` (inclusive); arrays are indexed by
    `gfn - first` and cover only gfns below the P2M's end (`gfn.size` may be smaller than
    the range). Pages the domain does not own read False / 0 everywhere."""

    domid: int
    first: int
    last: int
    gfn: np.ndarray  # uint64
    mfn: np.ndarray  # uint64, INVALID_MFN for holes
    owned: np.ndarray  # bool: a valid P2M entry
    accessed: np.ndarray  # bool: read or written by the guest since it owns the frame
    dirty: np.ndarray  # bool: written
    window: np.ndarray  # bool: accessed since the last `Z` (or since creation)
    first_touch_ns: np.ndarray  # uint64: machine time of the first access, 0 = never

    @property
    def pages(self) -> int:
        return int(np.count_nonzero(self.owned))

    @property
    def nr_accessed(self) -> int:
        return int(np.count_nonzero(self.accessed))

    @property
    def nr_dirty(self) -> int:
        return int(np.count_nonzero(self.dirty))

    @property
    def nr_window(self) -> int:
        return int(np.count_nonzero(self.window))

    @property
    def nr_never(self) -> int:
        return self.pages - self.nr_accessed

    def summary(self) -> str:
        """`dN pages=P accessed=A dirty=D window=R never=N` (SPEC §5)."""
        return (
            f"d{self.domid} pages={self.pages} accessed={self.nr_accessed} "
            f"dirty={self.nr_dirty} window={self.nr_window} never={self.nr_never}"
        )

    def heat_counts(self, columns: int = HEAT_COLUMNS) -> tuple[np.ndarray, np.ndarray]:
        """(owned pages, pages accessed in the window) per column.

        The range `first..last` (n gfns) is cut into `columns` buckets: gfn g falls in
        column `(g - first) * columns // n`, so each column covers n/columns gfns (rounded,
        the larger buckets spread evenly) and, for n < columns, some columns are empty.
        """
        n = self.last - self.first + 1
        # Column c starts at offset ceil(c * n / columns); prefix sums give each column's
        # count without touching the pages one by one.
        edges = (np.arange(columns + 1, dtype=np.int64) * n + columns - 1) // columns
        edges = np.minimum(edges, self.gfn.size)
        zero = np.zeros(1, dtype=np.int64)
        cs_own = np.concatenate((zero, np.cumsum(self.owned, dtype=np.int64)))
        cs_win = np.concatenate((zero, np.cumsum(self.window, dtype=np.int64)))
        owned = cs_own[edges[1:]] - cs_own[edges[:-1]]
        win = cs_win[edges[1:]] - cs_win[edges[:-1]]
        return owned, win

    def heat(self, columns: int = HEAT_COLUMNS) -> str:
        """One character per column: ` ` no page accessed in the window, `.` under 25% of
        the column's owned pages, `:` under 50%, `o` under 75%, `#` 75% or more."""
        owned, win = self.heat_counts(columns)
        level = np.zeros(columns, dtype=np.int64)
        some = win > 0
        # 4 * win / owned, compared in integers: 0..3 -> . : o, 4 -> #
        q = np.where(owned > 0, (4 * win) // np.maximum(owned, 1), 0)
        level[some] = 1 + np.minimum(q[some], 3)
        return "".join(HEAT_CHARS[i] for i in level.tolist())

    def heat_line(self) -> str:
        """`dN heat [<64 columns>] 0xFIRST-0xLAST` (the second line of `U` per domain)."""
        return f"d{self.domid} heat [{self.heat()}] {self.first:#x}-{self.last:#x}"


def tracked(dom) -> bool:
    """Whether `dom`'s accesses are recorded: a live shadowed guest (not the PV dom0)."""
    paging = getattr(dom, "paging", None)
    return (
        paging is not None
        and not getattr(paging, "dying", False)
        and not getattr(dom, "is_dying", 0)
        and hasattr(paging, "shadow_l1_entries")
    )


def _quiesce(machine, dom):
    sched = getattr(machine, "sched", None)
    if sched is not None and hasattr(sched, "quiesce"):
        return sched.quiesce(dom)
    return contextlib.nullcontext()


@contextlib.contextmanager
def hold(machine, dom):
    """Keep `dom`'s vCPUs out of `emu_start` and its lifecycle still (create/destroy/balloon)
    for the body; quiesce first, then the machine lock (a crashing vCPU's thread destroys
    its domain under that lock after leaving `emu_start`)."""
    lock = getattr(machine, "lock", None)
    with _quiesce(machine, dom), lock if lock is not None else contextlib.nullcontext():
        yield


def _shadow_bits(machine, dom, p2m: np.ndarray, first: int):
    """gfn offsets (from `first`, within `p2m`) whose present shadow L1 entry has A; and D."""
    ent = dom.paging.shadow_l1_entries()
    pa = np.uint64(_PTE_P | _PTE_A)
    ent = ent[(ent & pa) == pa]
    if not ent.size:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty
    mfn = (ent & _PTE_ADDR) >> np.uint64(12)
    nr = machine.ram.nr_frames
    ok = mfn < np.uint64(nr)
    mfn, ent = mfn[ok], ent[ok]
    gfn = machine.m2p[mfn.astype(np.intp)]
    off = gfn - np.uint64(first)  # wraps for gfn < first: then off >= size below
    ok = off < np.uint64(p2m.size)
    off, mfn, ent = off[ok].astype(np.intp), mfn[ok], ent[ok]
    ok = p2m[off] == mfn  # the M2P entry maps back: the frame is this domain's gfn
    off, ent = off[ok], ent[ok]
    dirty = off[(ent & np.uint64(_PTE_D)) != 0]
    return off, dirty


def scan_domain(
    machine, dom, first: int | None = None, last: int | None = None, *, quiesce: bool = True
) -> DomainScan:
    """Scan `dom` over gfns `first`..`last` inclusive (default: its whole P2M).

    Raises ScanError for a domain whose accesses are not tracked (dom0, a dying domain) or a
    bad range. With `quiesce` (the default) the domain's vCPUs are held out of `emu_start`
    while its shadow entries are read; pass False only if the caller already holds it.
    """
    if not tracked(dom):
        raise ScanError(f"d{dom.domid} is not a shadowed guest: its accesses are not tracked")
    p2m_len = len(dom.p2m)
    first = 0 if first is None else int(first)
    last = max(p2m_len - 1, first) if last is None else int(last)
    if first < 0 or last < 0 or first > MAX_GFN or last > MAX_GFN:
        raise ScanError(f"gfn range {first:#x}-{last:#x} outside 0x0-{MAX_GFN:#x}")
    if last < first:
        raise ScanError(f"reversed gfn range {first:#x}-{last:#x}")
    ctx = hold(machine, dom) if quiesce else contextlib.nullcontext()
    with ctx:
        if not tracked(dom):
            raise ScanError(f"d{dom.domid} is being destroyed")
        return _scan_locked(machine, dom, first, last)


def _scan_locked(machine, dom, first: int, last: int) -> DomainScan:
    rec = access_of(machine)
    nr = machine.ram.nr_frames
    p2m_all = np.asarray(dom.p2m)
    hi = min(last + 1, p2m_all.size)
    p2m = p2m_all[first:hi] if first < hi else p2m_all[:0]
    owned = (p2m != INVALID_MFN) & (p2m < np.uint64(nr))
    idx = np.where(owned, p2m, 0).astype(np.intp)
    accessed = (rec.accessed[idx] != 0) & owned
    dirty = (rec.written[idx] != 0) & owned
    window = (rec.window[idx] != 0) & owned
    first_touch = np.where(owned, rec.first_touch_ns[idx], np.uint64(0))
    a_off, d_off = _shadow_bits(machine, dom, p2m, first)
    if a_off.size:
        window[a_off] = True
        accessed[a_off] = True  # a hardware-set A bit is a guest access, whatever the record
    if d_off.size:
        dirty[d_off] = True
    return DomainScan(
        domid=dom.domid,
        first=first,
        last=last,
        gfn=np.arange(first, first + p2m.size, dtype=np.uint64),
        mfn=p2m.copy(),
        owned=owned,
        accessed=accessed,
        dirty=dirty,
        window=window,
        first_touch_ns=first_touch,
    )


def scan_all(machine) -> list[DomainScan]:
    """Every tracked domain (the domUs; not dom0, not dying ones), in domid order."""
    out = []
    for domid in sorted(machine.domains):
        dom = machine.domains.get(domid)
        if dom is None or not tracked(dom):
            continue
        try:
            out.append(scan_domain(machine, dom))
        except ScanError:  # destroyed meanwhile: it leaves the report
            continue
    return out


def reset_window(machine, dom, *, quiesce: bool = True) -> int:
    """Key `Z` for `dom`: start a new accessed-page window.

    Clears `window` for the domain's frames and the A bit of every shadow L1 entry, and
    flushes the TLB of every vCPU of the domain (emu/access.py `reset_window`), so the next
    access sets A again (or faults, for entries removed meanwhile). Returns the number of
    L1 shadows whose entries were cleared.
    """
    if not tracked(dom):
        raise ScanError(f"d{dom.domid} is not a shadowed guest: its accesses are not tracked")
    ctx = hold(machine, dom) if quiesce else contextlib.nullcontext()
    with ctx:
        if not tracked(dom):
            raise ScanError(f"d{dom.domid} is being destroyed")
        n = int(dom.paging.shadow_l1_mfns().size)
        access_of(machine).reset_window(dom)
        return n
