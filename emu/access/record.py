"""The per-frame access record (`machine.access`): which machine frames a guest has touched.

Real Xen keeps no such record (docs/differences.md); we add it exactly where Xen's shadow fault path
sets a guest Accessed/Dirty bit for a guest access, so every first read and first write of a
frame is seen. Arrays are indexed by MFN:

* `accessed` (u1): read or written by its guest at least once since it was given to it;
* `written` (u1): written at least once;
* `first_touch_ns` (u8): machine time (`machine.now()`) of the first access, 0 = never;
* `window` (u1): accessed since the last `reset_window()` (key `Z`). After a reset the shadow
  L1 entries lose their A bit, so accesses through present shadows are seen by the hardware
  walker (which sets A in the shadow entry) and folded in by `fold_window()`;
* `idle` (u1): the idle age, windows (keys `Z`) since the frame's last access: 1 for a frame
  accessed in the window the last `Z` closed, growing by one per `Z` without an access
  (saturating at 255); 0 for a frame never accessed. `fold_ages()` updates it at each `Z`.

PV guests have no shadows: their A/D bits live in their own L1 tables (emu/access/pv.py).
For them the record holds what those bits showed when they were last cleared or dropped:
`fold_pte()` for an L1 entry being replaced or released, `fold_frames()` at each `Z`.

The fault path writes through the `mv_*` memoryviews (Python ints, ~30 ns a store).
Accesses by the hypervisor itself never reach this record.
"""

from __future__ import annotations

import numpy as np

from emu.mm.page import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    INVALID_MFN,
    PAGE_SHIFT,
    PTE_ADDR_MASK,
)

_PA = _PAGE_PRESENT | _PAGE_ACCESSED
_U_ADDR = np.uint64(PTE_ADDR_MASK)
_U_SHIFT = np.uint64(PAGE_SHIFT)


MAX_SPANS = 64


def _frames_of(ent: np.ndarray) -> np.ndarray:
    ent &= _U_ADDR  # in place: `ent` is a fresh selection, no more temporaries
    ent >>= _U_SHIFT
    return ent.view(np.int64)


def l1_marks(machine, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MFNs mapped by present entries of the L1 tables in `frames` (shadow L1s of a shadowed
    guest, or a PV guest's own validated L1s) with A set, and with D set."""
    if not frames.size:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    # Whole 4 KiB rows (one per table): a block copy each, not an index per entry.
    ent = machine.ram.u64.reshape(-1, 512)[np.asarray(frames, dtype=np.intp)].ravel()
    low = ent.view(np.uint8)[::8]  # P, A, D are in the low byte (little-endian): no copy
    pa = np.uint8(_PAGE_PRESENT | _PAGE_ACCESSED)
    pd = np.uint8(_PAGE_PRESENT | _PAGE_DIRTY)
    # flatnonzero + take: much faster than a boolean-mask selection of 8-byte entries.
    a = _frames_of(ent.take(np.flatnonzero((low & pa) == pa)))
    d = _frames_of(ent.take(np.flatnonzero((low & pd) == pd)))  # D outlives a cleared A
    nr = machine.ram.nr_frames
    if a.size and int(a.max()) >= nr:
        a = a[a < nr]
    if d.size and int(d.max()) >= nr:
        d = d[d < nr]
    return a, d


def mfn_spans(mfns: np.ndarray) -> list[tuple[int, int]] | None:
    """`mfns` as runs of consecutive frames [(lo, hi), ...] in order, or None when there are
    more than MAX_SPANS (then a gather through the index is cheaper than many slices)."""
    if not mfns.size:
        return []
    brk = np.flatnonzero(np.diff(mfns) != 1)
    if brk.size >= MAX_SPANS:
        return None
    starts = [0, *(brk + 1).tolist()]
    ends = [*(brk + 1).tolist(), int(mfns.size)]
    return [(int(mfns[a]), int(mfns[a]) + b - a) for a, b in zip(starts, ends, strict=True)]


def _age(age: np.ndarray, window: np.ndarray) -> None:
    """In place: +1 for aged frames below 255, then 1 where `window` is set."""
    np.add(age, (age > 0) & (age < 255), out=age, casting="unsafe")
    np.putmask(age, window, 1)


class AccessRecord:
    """Per-MFN access arrays for the whole machine."""

    def __init__(self, nr_frames: int) -> None:
        self.nr_frames = nr_frames
        self.accessed = np.zeros(nr_frames, dtype=np.uint8)
        self.written = np.zeros(nr_frames, dtype=np.uint8)
        self.window = np.zeros(nr_frames, dtype=np.uint8)
        self.first_touch_ns = np.zeros(nr_frames, dtype=np.uint64)
        self.idle = np.zeros(nr_frames, dtype=np.uint8)
        self.mv_accessed = memoryview(self.accessed)
        self.mv_written = memoryview(self.written)
        self.mv_window = memoryview(self.window)
        self.mv_first_touch = memoryview(self.first_touch_ns).cast("B").cast("Q")

    def clear(self, mfns: np.ndarray) -> None:
        """Forget frames leaving a domain (ballooned out, domain destroyed)."""
        mfns = np.asarray(mfns, dtype=np.uint64)
        mfns = mfns[mfns < self.nr_frames].astype(np.intp)
        self.accessed[mfns] = 0
        self.written[mfns] = 0
        self.window[mfns] = 0
        self.first_touch_ns[mfns] = 0
        self.idle[mfns] = 0

    def fold_accessed(self, ents: np.ndarray) -> None:
        """OR into `window` the frames that shadow L1 entries `ents` (uint64) show accessed:
        present with the A bit the hardware walker set. Callers fold entries about to be
        cleared or removed, so the window never loses an access."""
        ents = np.ascontiguousarray(ents, dtype=np.uint64)
        low = ents.view(np.uint8)[::8]  # P and A are in the low byte (little-endian)
        hit = ents.take(np.flatnonzero((low & np.uint8(_PA)) == _PA))
        if hit.size:
            m = ((hit & _U_ADDR) >> _U_SHIFT).astype(np.intp)
            self.window[m[m < self.nr_frames]] = 1

    def fold_entry(self, e: int) -> None:
        """`fold_accessed` for one entry (invlpg, a revalidated entry): no numpy per call."""
        if e & _PA == _PA:
            m = (e & PTE_ADDR_MASK) >> PAGE_SHIFT
            if m < self.nr_frames:
                self.mv_window[m] = 1

    def fold_pte(self, e: int) -> None:
        """A PV guest's L1 entry `e` is being replaced or released: keep what its A and D
        bits say (lifetime and window), so the record never loses an access."""
        if e & _PA == _PA:
            m = (e & PTE_ADDR_MASK) >> PAGE_SHIFT
            if m < self.nr_frames:
                self.mv_accessed[m] = 1
                self.mv_window[m] = 1
                if e & _PAGE_DIRTY:
                    self.mv_written[m] = 1

    def fold_frames(self, a_mfns: np.ndarray, d_mfns: np.ndarray, now_ns: int) -> None:
        """Frames a PV guest's L1 entries show accessed (`a_mfns`) and dirty (`d_mfns`),
        just before `Z` clears the A bits: into `accessed`, `window`, `written`; a first
        sighting stamps `first_touch_ns` with `now_ns` (for PV the time it was first seen)."""
        if a_mfns.size:
            new = a_mfns[self.first_touch_ns.take(a_mfns) == 0]
            self.first_touch_ns[new] = np.uint64(max(now_ns, 1))
            self.accessed[a_mfns] = 1
            self.window[a_mfns] = 1
        if d_mfns.size:
            self.written[d_mfns] = 1

    def fold_ages(self, mfns: np.ndarray, window: np.ndarray | None = None) -> None:
        """Key `Z` for the frames `mfns` (int64) of one domain, then a new window: a frame
        accessed in the closing window gets age 1, one accessed before gets one more window
        (up to 255), one never accessed stays 0; `window` is cleared. `window` (bool, one
        per entry of `mfns`) overrides the record's window bits (a scan just computed them).
        Runs of consecutive MFNs (the usual case) are done in place on slices, with no
        gather or scatter."""
        spans = mfn_spans(mfns)
        if spans is None:
            age = self.idle.take(mfns)
            _age(age, self.window.take(mfns) if window is None else window)
            self.idle[mfns] = age
            self.window[mfns] = 0
            return
        off = 0
        for lo, hi in spans:
            win = self.window[lo:hi] if window is None else window[off : off + hi - lo]
            _age(self.idle[lo:hi], win)
            self.window[lo:hi] = 0
            off += hi - lo

    def fold_window(self, dom) -> None:
        """OR the hardware-set A bits of `dom`'s shadow L1 entries into `window`."""
        if dom.paging is not None:
            self.fold_accessed(dom.paging.shadow_l1_entries())

    def reset_window(self, dom, window: np.ndarray | None = None) -> None:
        """Key `Z` for one domain: start a new window.

        Ages the domain's frames (`fold_ages`, with the shadow A bits folded in first), clears
        `window` for them and the A bit of every shadow L1 entry of the domain, then flushes
        every vCPU's TLB so the next access sets A again. The caller keeps the domain's vCPUs
        out of `emu_start` (`machine.quiesce(dom)`); a PV domain's own L1 entries were
        folded in and cleared by emu/access/pv.py before. `window` (bool per gfn of the whole
        P2M): the window a scan under the same hold just computed (shadow A bits included),
        which saves folding the shadow entries again.
        """
        p2m = np.asarray(dom.p2m)
        valid = p2m < np.uint64(self.nr_frames)  # INVALID_MFN (holes) is never below
        full = bool(valid.all())
        mfns = (p2m if full else p2m[valid]).view(np.int64)
        if window is None:
            self.fold_window(dom)
        elif not full:
            window = window[valid]
        self.fold_ages(mfns, window)
        if dom.paging is not None:
            dom.paging.clear_l1_accessed()

    def domain_arrays(self, dom) -> dict[str, np.ndarray]:
        """Per-gfn views of the record for `dom` (holes read as never accessed).

        Returns `gfn`, `mfn` (INVALID_MFN for holes), `accessed`, `written`, `window`,
        `first_touch_ns`, each indexed like `dom.p2m`. `window` includes shadow A bits.
        """
        self.fold_window(dom)
        p2m = np.asarray(dom.p2m)
        valid = (p2m != np.uint64(INVALID_MFN)) & (p2m < np.uint64(self.nr_frames))
        idx = np.where(valid, p2m, 0).astype(np.intp)
        z8 = np.uint8(0)
        return {
            "gfn": np.arange(p2m.size, dtype=np.uint64),
            "mfn": p2m,
            "accessed": np.where(valid, self.accessed[idx], z8),
            "written": np.where(valid, self.written[idx], z8),
            "window": np.where(valid, self.window[idx], z8),
            "first_touch_ns": np.where(valid, self.first_touch_ns[idx], np.uint64(0)),
        }
