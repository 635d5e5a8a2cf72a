"""Accessed pages of PV guests: the A/D bits of their own L1 page tables (keys `U`, `Z`).

A PV guest has no shadows: the CPU walks the guest's own tables (emu/pv/mm.py) and sets A
(and D on a write) in the guest's L1 entries. The only way to find those tables is the frame
table: frames owned by the domain, in use, whose `type_info` says PGT_l1_page_table and
PGT_validated (emu/mm/page_info.py). Everything here is vectorised:

* `l1_frames(machine, dom)` selects them. The pass reads the top byte of `type_info` (type and
  PGT_validated) over the MFN span of the domain's P2M (one slice when the span is compact,
  else a slice per run of consecutive MFNs: a strided gather, or a pass over the whole
  16 M-frame table of a 64 GiB host, costs several times that); the owner and state of the
  few selected frames are then checked in `v` and `count_info`.
* `l1_marks(machine, frames)` (emu/access/record.py, shared with the shadow scan) gathers
  their 512 entries each and returns the MFNs mapped by present entries with A set, and
  with D set.
* `clear_accessed(machine, dom, frames)` is what Xen would have to do for `Z`: clear A in
  every entry of the guest's L1 tables, then flush every vCPU's TLB (the CPU caches the A
  bit with the translation; without the flush an access through a cached translation would
  not set A again). Unicorn's TLB is flushed the way the shadow code does it
  (emu/shadow/common.py `flush_tlbs`, the vCPUs' `flush_tlb`).

What the entries show before they are cleared or dropped is kept in the access record
(emu/access/record.py `fold_frames`, `fold_pte`). Real Xen keeps no such record and has no
such scan (docs/differences.md).
"""

from __future__ import annotations

import numpy as np

from emu.mm.page import _PAGE_ACCESSED, INVALID_MFN
from emu.mm.page_info import (
    PAGE_INFO_BYTES,
    PGC_state,
    PGT_l1_page_table,
    PGT_type_mask,
    PGT_validated,
    owner_code,
)

_TOP_MASK = np.uint8((PGT_type_mask | PGT_validated) >> 56)
_TOP_L1 = np.uint8((PGT_l1_page_table | PGT_validated) >> 56)
_STATE_MASK = np.uint8(PGC_state >> 56)  # PGC_state_inuse is 0
MAX_RUNS = 4096  # more runs than this: one gather instead of a slice per run


def is_pv_domu(dom) -> bool:
    """A PV domain other than dom0 (whose frames this emulator does not run)."""
    return getattr(getattr(dom, "spec", None), "type", "hvm") == "pv" and dom.domid != 0


def _type_top(machine) -> np.ndarray:
    """`type_info`'s top byte of every frame, a strided view (no copy)."""
    ft = machine.frames
    return ft.pi.view(np.uint8).reshape(-1, PAGE_INFO_BYTES)[:, 23]


def domain_mfns(machine, dom) -> np.ndarray:
    """The domain's frames (int64) from its P2M, holes and out-of-range entries dropped."""
    p2m = np.asarray(dom.p2m)
    ok = (p2m != np.uint64(INVALID_MFN)) & (p2m < np.uint64(machine.ram.nr_frames))
    return (p2m if ok.all() else p2m[ok]).view(np.int64)


def l1_frames(machine, dom, mfns: np.ndarray | None = None) -> np.ndarray:
    """The domain's validated L1 page-table frames (int64, ascending MFN): frames it owns, in
    use, typed PGT_l1_page_table and validated, in the MFN span of its P2M."""
    mfns = domain_mfns(machine, dom) if mfns is None else mfns
    if not mfns.size:
        return mfns
    top = _type_top(machine)
    lo, hi = int(mfns.min()), int(mfns.max()) + 1
    if hi - lo <= 2 * mfns.size:
        # Compact (the usual case: the heap gives a domain large contiguous chunks): one
        # slice over the span; frames in it that are not the domain's fail the owner check.
        cand = np.flatnonzero((top[lo:hi] & _TOP_MASK) == _TOP_L1) + lo
    else:
        cand = _by_runs(top, mfns)
    if not cand.size:
        return cand
    ft = machine.frames
    # Fancy indexing, not `take`: these are strided views of the table, and `take` would
    # first copy the whole field (16 M frames on a 64 GiB host).
    mine = (ft.v[cand] == owner_code(dom.domid)) & ((ft.flags[cand] & _STATE_MASK) == 0)
    return cand if mine.all() else cand[mine]


def _by_runs(top: np.ndarray, mfns: np.ndarray) -> np.ndarray:
    """Candidates among scattered frames: a slice per run of consecutive MFNs (a strided
    gather costs several times a slice), or one gather when there are too many runs."""
    starts = np.flatnonzero(np.diff(mfns) != 1) + 1
    if starts.size >= MAX_RUNS:
        return mfns[(top[mfns] & _TOP_MASK) == _TOP_L1]
    sel = []
    edges = [0, *starts.tolist(), mfns.size]
    for a, b in zip(edges, edges[1:], strict=False):
        lo = int(mfns[a])
        hit = np.flatnonzero((top[lo : lo + (b - a)] & _TOP_MASK) == _TOP_L1)
        if hit.size:
            sel.append(hit + lo)
    return np.concatenate(sel) if sel else mfns[:0]


def clear_accessed(machine, dom, frames: np.ndarray) -> None:
    """Clear A in every entry of the L1 tables `frames`, then flush every vCPU's TLB. The
    caller holds the domain's vCPUs out of `emu_start` and folded the bits in first."""
    if frames.size:
        rows = machine.ram.u64.reshape(-1, 512)
        rows[frames] &= ~np.uint64(_PAGE_ACCESSED)
    for v in dom.vcpus:
        if hasattr(v, "flush_tlb"):
            v.flush_tlb()
