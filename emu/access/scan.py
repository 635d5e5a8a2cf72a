"""The accessed-page scan: which of a domain's pages has its guest touched (key `U`, `Z`).

    from emu.access.scan import scan_domain
    s = scan_domain(machine, dom, 0x100, 0x3FFF)     # gfns 0x100..0x3fff inclusive
    s.accessed, s.dirty, s.window, s.first_touch_ns  # numpy arrays, one entry per gfn
    s.pages, s.nr_accessed, s.nr_dirty, s.nr_window, s.nr_never
    s.heat_levels()                                   # 0..4 per column of `U`'s heat line
    scan_all(machine)            # every shadowed guest, as `U` without arguments
    reset_window(machine, dom)   # key `Z`: a new window

Each call holds the domain still while it reads (`machine.quiesce(dom)`, then the
machine lock). `s.owned` marks the gfns the domain owns; `s.gfn` lists the gfns covered.

Two sources are combined, both vectorised (never a Python loop per page):

* the per-MFN access record (`machine.access`, emu/access/record.py), written by the shadow fault
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

Real Xen keeps none of this (docs/differences.md): the per-frame record is this emulator's addition,
made exactly where Xen's `sh_page_fault()` sets guest A/D bits.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from emu.access import pv
from emu.access.pv import is_pv_domu
from emu.access.record import l1_marks, mfn_spans
from emu.mm.page import (
    MAX_GFN,
)

HEAT_COLUMNS = 64
# Idle-age buckets of `U`'s idle line: windows since the last access (0 = the open window).
IDLE_BUCKETS = ("0", "1", "2-3", "4-7", "8-15", "16+")


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
    mfn: np.ndarray | None  # uint64, INVALID_MFN for holes (None without `detail`)
    owned: np.ndarray  # bool: a valid P2M entry
    accessed: np.ndarray  # bool: read or written by the guest since it owns the frame
    dirty: np.ndarray  # bool: written
    window: np.ndarray  # bool: accessed since the last `Z` (or since creation)
    first_touch_ns: np.ndarray | None  # uint64: first access time, 0 = never (None w/o detail)
    idle_hist: tuple[int, ...] = ()  # owned pages per IDLE_BUCKETS bucket, then never
    age: np.ndarray | None = None  # uint8: windows since the last access, 0 = this window or
    #                                never (see `accessed`); None without `detail`

    @property
    def gfn(self) -> np.ndarray:
        """The gfns the arrays cover (uint64), `first` up to the range's or the P2M's end."""
        return np.arange(self.first, self.first + self.owned.size, dtype=np.uint64)

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

    def heat_counts(self, columns: int = HEAT_COLUMNS) -> tuple[np.ndarray, np.ndarray]:
        """(owned pages, pages accessed in the window) per column.

        The range `first..last` (n gfns) is cut into `columns` buckets: gfn g falls in
        column `(g - first) * columns // n`, so each column covers n/columns gfns (rounded,
        the larger buckets spread evenly) and, for n < columns, some columns are empty.
        """
        n = self.last - self.first + 1
        # Column c covers offsets ceil(c * n / columns) .. ceil((c + 1) * n / columns) - 1:
        # one count_nonzero per column over a slice, never a loop per page.
        size = self.owned.size
        edges = [min(size, (c * n + columns - 1) // columns) for c in range(columns + 1)]
        owned = np.array(
            [np.count_nonzero(self.owned[a:b]) for a, b in zip(edges, edges[1:], strict=False)],
            dtype=np.int64,
        )
        win = np.array(
            [np.count_nonzero(self.window[a:b]) for a, b in zip(edges, edges[1:], strict=False)],
            dtype=np.int64,
        )
        return owned, win

    def heat_levels(self, columns: int = HEAT_COLUMNS) -> list[int]:
        """One level per column: 0 no page accessed in the window, 1 under 25% of the
        column's owned pages, 2 under 50%, 3 under 75%, 4 for 75% or more."""
        owned, win = self.heat_counts(columns)
        level = np.zeros(columns, dtype=np.int64)
        some = win > 0
        # 4 * win / owned, compared in integers: 0..3 -> 1..3, 4 -> 4
        q = np.where(owned > 0, (4 * win) // np.maximum(owned, 1), 0)
        level[some] = 1 + np.minimum(q[some], 3)
        return level.tolist()


def tracked(dom) -> bool:
    """Whether `dom`'s accesses are seen: a live shadowed guest, or a live PV domU (its own
    L1 tables, emu/access/pv.py); not dom0, whose frames this emulator does not run."""
    if dom.is_dying:
        return False
    paging = dom.paging
    if paging is not None:
        return not paging.dying
    return is_pv_domu(dom)


@contextlib.contextmanager
def hold(machine, dom):
    """Keep `dom`'s vCPUs out of `emu_start` and its lifecycle still (create/destroy/balloon)
    for the body; quiesce first, then the machine lock (a crashing vCPU's thread destroys
    its domain under that lock after leaving `emu_start`)."""
    with machine.quiesce(dom), machine.lock:
        yield


def _shadow_marks(machine, dom) -> tuple[np.ndarray, np.ndarray]:
    """MFNs mapped by present shadow L1 entries of `dom` with A set, and with D set."""
    return l1_marks(machine, dom.paging.shadow_l1_mfns())


def scan_domain(
    machine,
    dom,
    first: int | None = None,
    last: int | None = None,
    *,
    quiesce: bool = True,
    detail: bool = True,
) -> DomainScan:
    """Scan `dom` over gfns `first`..`last` inclusive (default: its whole P2M).

    `detail=False` leaves `mfn` and `first_touch_ns` None (no copy of the P2M slice, no
    gather of first-touch times): `U` needs only the counts.

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
        return _scan_locked(machine, dom, first, last, detail)


def _gather(arr: np.ndarray, idx: np.ndarray, spans) -> np.ndarray:
    """`arr[idx]` as a new array: slices of runs when `spans` (mfn_spans) is known."""
    if spans is None:
        return arr.take(idx)
    if len(spans) == 1:
        lo, hi = spans[0]
        return arr[lo:hi].copy()
    return np.concatenate([arr[lo:hi] for lo, hi in spans])


def _scan_locked(machine, dom, first: int, last: int, detail: bool) -> DomainScan:
    rec = machine.access
    nr = machine.ram.nr_frames
    p2m_all = np.asarray(dom.p2m)
    hi = min(last + 1, p2m_all.size)
    p2m = p2m_all[first:hi] if first < hi else p2m_all[:0]
    owned = p2m < np.uint64(nr)  # INVALID_MFN (holes) is never below nr
    full = bool(owned.all())
    # The common case (no holes): the P2M itself is the index, no copy; in runs of
    # consecutive MFNs, copies of slices (a memcpy each) instead of a gather.
    idx = p2m.view(np.int64) if full else np.where(owned, p2m, 0).view(np.int64)
    spans = mfn_spans(idx) if full else None
    accessed = _gather(rec.accessed, idx, spans).view(bool)
    dirty = _gather(rec.written, idx, spans).view(bool)
    window = _gather(rec.window, idx, spans).view(bool)
    first_touch = _gather(rec.first_touch_ns, idx, spans) if detail else None
    if not full:
        accessed &= owned
        dirty &= owned
        window &= owned
        if first_touch is not None:
            first_touch[~owned] = 0
    # Hardware-set shadow A/D bits. Most are already in the record (an entry is created by
    # a recorded fault, made writable only after a recorded write); only the rest, e.g.
    # accesses through present entries since a `Z`, go through the M2P to their gfn.
    if dom.paging is not None:
        a_m, d_m = _shadow_marks(machine, dom)
    else:  # PV: the A/D bits of the guest's own L1 tables, found through the frame table
        a_m, d_m = l1_marks(machine, pv.l1_frames(machine, dom))
    a_new = a_m[rec.window.take(a_m) == 0] if a_m.size else a_m
    d_new = d_m[rec.written.take(d_m) == 0] if d_m.size else d_m
    for mfns, targets in ((a_new, (accessed, window)), (d_new, (dirty,))):
        if not mfns.size:
            continue
        off = machine.m2p.take(mfns).view(np.int64)
        if first:
            off = off - first  # INVALID (-1) stays negative
        ok = (off >= 0) & (off < p2m.size)
        if not ok.all():
            keep = np.flatnonzero(ok)
            off, mfns = off.take(keep), mfns.take(keep)
        ok = p2m.take(off).view(np.int64) == mfns  # the frame is this domain's gfn
        if not ok.all():
            off = off.take(np.flatnonzero(ok))
        for arr in targets:
            arr[off] = True
    # Idle ages: 0 in the window, the record's age otherwise (a never-accessed page has age
    # 0 too). Counted by thresholds on the u8 ages: no per-page bucket array.
    age = _gather(rec.idle, idx, spans)
    np.multiply(age, ~window, out=age)
    ge = [int(np.count_nonzero(age >= t)) for t in (1, 2, 4, 8, 16)] + [0]
    hist = (int(np.count_nonzero(window)), *(ge[i] - ge[i + 1] for i in range(5)))
    hist = (*hist, int(np.count_nonzero(owned)) - int(np.count_nonzero(accessed)))
    return DomainScan(
        domid=dom.domid,
        first=first,
        last=last,
        mfn=p2m.copy() if detail else None,
        owned=owned,
        accessed=accessed,
        dirty=dirty,
        window=window,
        first_touch_ns=first_touch,
        idle_hist=hist,
        age=age if detail else None,  # holes read 0
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


def reset_window(machine, dom, *, quiesce: bool = True, scan: DomainScan | None = None) -> int:
    """Key `Z` for `dom`: start a new accessed-page window.

    Ages the domain's frames, clears `window` for them and the A bit of every shadow L1
    entry, and flushes the TLB of every vCPU of the domain (emu/access/record.py
    `reset_window`), so the next access sets A again (or faults, for entries removed
    meanwhile). For a PV domain the A bits cleared are those of its own L1 tables, after
    folding them (and D) into the record (emu/access/pv.py). Returns the number of L1
    tables (shadow or, for PV, the guest's) whose entries were cleared. `scan`: a scan of
    the whole domain made under the same hold (`quiesce=False`), whose window is reused.
    """
    if not tracked(dom):
        raise ScanError(f"d{dom.domid} is not a shadowed guest: its accesses are not tracked")
    ctx = hold(machine, dom) if quiesce else contextlib.nullcontext()
    with ctx:
        if not tracked(dom):
            raise ScanError(f"d{dom.domid} is being destroyed")
        rec = machine.access
        window = None
        if dom.paging is not None:
            n = int(dom.paging.shadow_l1_mfns().size)
            if scan is not None and scan.first == 0 and scan.window.size == len(dom.p2m):
                window = scan.window  # the whole P2M, under the caller's hold
        else:
            frames = pv.l1_frames(machine, dom)
            a_m, d_m = l1_marks(machine, frames)
            rec.fold_frames(a_m, d_m, machine.now())
            pv.clear_accessed(machine, dom, frames)
            n = int(frames.size)
        rec.reset_window(dom, window)
        dom.access_windows += 1
        _publish_window(machine, dom)
        return n


def _publish_window(machine, dom) -> None:
    """The window number for this emulator's guest kernel (its start-info page, GFN 0, at
    START_WINDOW; emu/workload.py): the `phases` workload serves one phase per window. PV
    guests have their own kernels and no such page; an `asm:` program may ignore it."""
    from emu.workload import START_INFO_MAGIC, START_MAGIC, START_WINDOW

    if dom.hvm is None or not len(dom.p2m):
        return
    mfn = int(dom.p2m[0])
    if mfn >= machine.ram.nr_frames:
        return
    words = machine.ram.u64[mfn << 9 : (mfn + 1) << 9]
    if int(words[START_MAGIC >> 3]) == START_INFO_MAGIC:
        words[START_WINDOW >> 3] = dom.access_windows
