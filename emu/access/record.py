"""The per-frame access record (`machine.access`): which machine frames a guest has touched.

Real Xen keeps no such record (xen.md §4.11); we add it exactly where Xen's shadow fault path
sets a guest Accessed/Dirty bit for a guest access, so every first read and first write of a
frame is seen. Arrays are indexed by MFN:

* `accessed` (u1): read or written by its guest at least once since it was given to it;
* `written` (u1): written at least once;
* `first_touch_ns` (u8): machine time (`machine.now()`) of the first access, 0 = never;
* `window` (u1): accessed since the last `reset_window()` (key `Z`). After a reset the shadow
  L1 entries lose their A bit, so accesses through present shadows are seen by the hardware
  walker (which sets A in the shadow entry) and folded in by `fold_window()`.

The fault path writes through the `mv_*` memoryviews (Python ints, ~30 ns a store).
Accesses by the hypervisor itself never reach this record.
"""

from __future__ import annotations

import numpy as np

_PTE_P = 0x1
_PTE_A = 0x20
_PTE_ADDR = 0x000FFFFFFFFFF000
INVALID_MFN = (1 << 64) - 1


class AccessRecord:
    """Per-MFN access arrays for the whole machine."""

    def __init__(self, nr_frames: int) -> None:
        self.nr_frames = nr_frames
        self.accessed = np.zeros(nr_frames, dtype=np.uint8)
        self.written = np.zeros(nr_frames, dtype=np.uint8)
        self.window = np.zeros(nr_frames, dtype=np.uint8)
        self.first_touch_ns = np.zeros(nr_frames, dtype=np.uint64)
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

    def fold_window(self, dom) -> None:
        """OR the hardware-set A bits of `dom`'s shadow L1 entries into `window`."""
        paging = getattr(dom, "paging", None)
        if paging is None:
            return
        ent = paging.shadow_l1_entries()
        hit = ent[(ent & np.uint64(_PTE_P | _PTE_A)) == np.uint64(_PTE_P | _PTE_A)]
        if hit.size:
            m = ((hit & np.uint64(_PTE_ADDR)) >> np.uint64(12)).astype(np.intp)
            self.window[m[m < self.nr_frames]] = 1

    def reset_window(self, dom) -> None:
        """Key `Z` for one domain: start a new window.

        Clears `window` for the domain's frames and the A bit of every shadow L1 entry of the
        domain, then flushes every vCPU's TLB so the next access sets A again. The caller
        keeps the domain's vCPUs out of `emu_start` (`machine.sched.quiesce(dom)`).
        """
        p2m = np.asarray(dom.p2m)
        mfns = p2m[p2m != np.uint64(INVALID_MFN)]
        mfns = mfns[mfns < self.nr_frames].astype(np.intp)
        self.window[mfns] = 0
        paging = getattr(dom, "paging", None)
        if paging is not None:
            paging.clear_l1_accessed()

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


def access_of(machine) -> AccessRecord:
    """`machine.access`, created on first use (one slot per machine frame)."""
    rec = getattr(machine, "access", None)
    if rec is None:
        rec = AccessRecord(machine.ram.nr_frames)
        machine.access = rec
    return rec
