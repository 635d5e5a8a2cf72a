"""Memory ops (xen/common/memory.c): populate_physmap, increase/decrease_reservation, and
the balloon driver's side of `xl mem-set` (set_target).
"""

from __future__ import annotations

import numpy as np

from emu.domain import Domain
from emu.mm.p2m import p2m_remove_entries, p2m_set_entries
from emu.mm.page import INVALID_MFN


class MemoryOpError(Exception):
    pass


def _distinct(a: np.ndarray) -> bool:
    if len(a) < 2 or bool(np.all(a[1:] > a[:-1])):  # the usual case: ascending
        return True
    s = np.sort(a)
    return bool(np.all(s[1:] != s[:-1]))


def populate_physmap(machine, dom: Domain, gfns) -> np.ndarray | None:
    """XENMEM_populate_physmap: allocate one frame per gfn and map it (P2M and M2P).

    All or nothing: on failure (over max_pages, heap exhausted) nothing is allocated and
    None is returned.
    """
    gfns = np.asarray(gfns, dtype=np.int64)
    if len(gfns) == 0:
        return np.zeros(0, dtype=np.int64)
    if gfns.min() < 0 or not _distinct(gfns):
        raise MemoryOpError("populate_physmap: bad gfn list")
    with machine.heap.lock:
        dom.ensure_p2m(int(gfns.max()) + 1)
        if np.any(dom.p2m[gfns] != INVALID_MFN):
            raise MemoryOpError("populate_physmap: gfn already populated")
        mfns = machine.heap.alloc_domheap_bulk(dom, len(gfns))
        if mfns is None:
            return None
        p2m_set_entries(machine, dom, gfns, mfns)
        return mfns


def increase_reservation(machine, dom: Domain, nr_extents: int) -> np.ndarray | None:
    """XENMEM_increase_reservation: frames for the domain, not mapped (PV gets the MFNs)."""
    with machine.heap.lock:
        return machine.heap.alloc_domheap_bulk(dom, nr_extents)


def decrease_reservation(machine, dom: Domain, gfns) -> int:
    """XENMEM_decrease_reservation / guest_remove_page(): unmap gfns, free their frames.

    Shadows mapping those gfns are removed first (hooks.p2m_removing); the frames are freed
    and scrubbed. Returns the number of pages released.
    """
    gfns = np.asarray(gfns, dtype=np.int64)
    if len(gfns) == 0:
        return 0
    if gfns.min() < 0 or gfns.max() >= len(dom.p2m) or np.any(dom.p2m[gfns] == INVALID_MFN):
        raise MemoryOpError("decrease_reservation: gfn not populated")
    for hook in list(machine.hooks.p2m_removing):
        hook(dom, gfns)
    with machine.heap.lock:
        mfns = p2m_remove_entries(machine, dom, gfns)
        # Clear PGC_allocated (the allocation ref) and the owner; the frames go to the heap.
        dom.tot_pages -= len(mfns)
        machine.heap.free_runs(mfns, need_scrub=True)
    return len(mfns)


def balloon_candidates(dom: Domain, count: int) -> np.ndarray:
    """The gfns a balloon driver gives back first: highest populated, never reserved ones."""
    pop = dom.populated_gfns()
    res = dom.reserved_array()
    if len(res):
        pop = pop[~np.isin(pop, res)]
    count = min(count, len(pop))
    return pop[len(pop) - count :] if count > 0 else pop[:0]


def balloon_holes(dom: Domain, count: int) -> np.ndarray:
    """The gfns a balloon driver populates first: the lowest holes, then beyond the end."""
    holes = np.flatnonzero(dom.p2m == INVALID_MFN)[:count]
    if len(holes) < count:
        extra = np.arange(len(dom.p2m), len(dom.p2m) + count - len(holes))
        holes = np.concatenate((holes, extra))
    return holes.astype(np.int64)


def set_target(machine, dom: Domain, pages: int) -> int:
    """The balloon driver reaching `pages` (xenstore memory/target).

    Down: gives back the highest unreserved gfns. Up: populates holes, bounded by max_pages
    and by what the heap has (best effort, as a balloon driver is). Returns tot_pages.
    """
    pages = max(0, int(pages))
    dom.target_pages = pages
    # No heap lock across decrease_reservation: its p2m_removing hooks wait for the domain's
    # vCPUs to leave Unicorn, and a vCPU may need the heap lock to get there.
    if pages < dom.tot_pages:
        gfns = balloon_candidates(dom, dom.tot_pages - pages)
        if len(gfns):
            decrease_reservation(machine, dom, gfns)
    elif pages > dom.tot_pages:
        with machine.heap.lock:
            limit = min(pages, dom.max_pages)
            want = min(limit - dom.tot_pages, machine.heap.total_avail_pages)
            if want > 0:
                populate_physmap(machine, dom, balloon_holes(dom, want))
    return dom.tot_pages
