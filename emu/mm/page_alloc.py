"""The heap: Xen's buddy allocator (xen/common/page_alloc.c), one NUMA node.

Shape as in Xen: free lists per (zone, order), `MAX_ORDER` 20, zones by address width
(zone = flsl(mfn), 41 zones; zone 0 = MEMZONE_XEN, empty on x86-64 because the Xen heap is
carved from the domain heap), `avail[node][zone]` page counts, `total_avail_pages`. A free
chunk is order-aligned; its head page holds the order in `v` (`PFN_ORDER()`), every page of
it is in `PGC_state_free`. Allocations search from the highest permitted zone downward.

The free lists are Python dicts keyed by head MFN (insertion-ordered, O(1) removal of a buddy)
instead of the page_list links in the frame table; the frame table's `list_*` fields stay 0.

Scrubbing, as Xen's bootscrub=idle: once the machine has booted, a heap with a `scrubber`
(emu/mm/scrub.py) leaves freed guest pages marked `PGC_need_scrub`, counted in
`node_need_scrub` (key `H`), for idle pCPUs to scrub in the background (`scrub_some()`,
bounded chunks); free RAM is marked so at boot too (`mark_free_dirty()`). An allocation
scrubs the dirty pages it takes (alloc_heap_pages()). A heap without a scrubber (not booted)
scrubs at once when pages are freed. Scrubbing is madvise MADV_DONTNEED: the OS takes the
frames back and they read as zeros.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from emu.mm.page import PADDR_BITS, PAGE_SHIFT
from emu.mm.page_info import (
    FrameTable,
    PGC_allocated,
    PGC_need_scrub,
    PGC_state,
    PGC_state_free,
    PGC_state_inuse,
    PGC_xen_heap,
    owner_code,
)
from emu.mm.ram import MachineRAM

if TYPE_CHECKING:
    from emu.domain import Domain

MAX_ORDER = 20
NR_ZONES = PADDR_BITS - PAGE_SHIFT + 1  # 41
MEMZONE_XEN = 0
MAX_NUMNODES = 1

MEMF_no_scrub = 1 << 4
MEMF_bits_shift = 24


def MEMF_bits(bits: int) -> int:
    """memflags asking for memory below 2^bits bytes."""
    return bits << MEMF_bits_shift


def flsl(x: int) -> int:
    return int(x).bit_length()


def page_to_zone(mfn: int) -> int:
    """Zone of a domheap page: flsl(mfn), MFN 0 -> zone 1."""
    return flsl(mfn) or 1


def bits_to_zone(bits: int) -> int:
    return 1 if bits < PAGE_SHIFT + 1 else bits - PAGE_SHIFT


def zones_of(mfns: np.ndarray) -> np.ndarray:
    """Vectorised page_to_zone()."""
    m = np.asarray(mfns, dtype=np.uint64)
    z = np.zeros(m.shape, dtype=np.int64)
    nz = m > 0
    z[nz] = np.floor(np.log2(m[nz].astype(np.float64))).astype(np.int64) + 1
    z[~nz] = 1
    return z


def aligned_chunks(start: int, end: int, max_order: int = MAX_ORDER):
    """Split [start, end) into maximal order-aligned chunks: yields (mfn, order)."""
    while start < end:
        order = (start & -start).bit_length() - 1 if start else max_order
        order = min(order, max_order, (end - start).bit_length() - 1)
        yield start, order
        start += 1 << order


def runs_of(mfns: np.ndarray) -> list[tuple[int, int]]:
    """Sorted MFNs -> contiguous runs [start, end)."""
    if len(mfns) == 0:
        return []
    m = np.sort(np.asarray(mfns, dtype=np.int64))
    breaks = np.flatnonzero(np.diff(m) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(m)]))
    return [(int(m[s]), int(m[e - 1]) + 1) for s, e in zip(starts, ends, strict=True)]


class HeapError(Exception):
    pass


class Heap:
    """`_heap[node][zone][order]` free lists over the frame table."""

    def __init__(self, frames: FrameTable, ram: MachineRAM | None = None) -> None:
        self.ft = frames
        self.ram = ram
        self.nr_frames = frames.nr_frames
        self.free: list[list[dict[int, None]]] = [
            [{} for _ in range(MAX_ORDER + 1)] for _ in range(NR_ZONES)
        ]
        self.avail = np.zeros((MAX_NUMNODES, NR_ZONES), dtype=np.int64)
        self.total_avail_pages = 0
        self.node_need_scrub = [0] * MAX_NUMNODES
        self.dirty_runs: deque[tuple[int, int]] = deque()  # [start, end) freed dirty
        self.scrubber = None  # emu/mm/scrub.py IdleScrubber once the machine has booted
        self.lock = threading.RLock()
        frames.on_last_put = self._last_put

    # ---- low level: the buddy allocator --------------------------------------------------

    def _mark_free(self, mfn: int, order: int, need_scrub: bool) -> None:
        # Whole records at once: links 0, count_info free (+need_scrub), type 0, v/tlbflush 0.
        ci = PGC_state_free | (PGC_need_scrub if need_scrub else 0)
        self.ft.words[mfn : mfn + (1 << order)] = np.array([0, ci, 0, 0], dtype=np.uint64)

    def _is_free_head(self, mfn: int, order: int) -> bool:
        if mfn <= 0 or mfn + (1 << order) > self.nr_frames:
            return False
        ci = int(self.ft.count_info[mfn])
        return ci & PGC_state == PGC_state_free and int(self.ft.v[mfn]) == order

    def free_heap_pages(self, mfn: int, order: int, need_scrub: bool = False) -> None:
        """Return an order-aligned chunk to the heap, merging with free buddies."""
        with self.lock:
            n = 1 << order
            if mfn % n or mfn <= 0 or mfn + n > self.nr_frames:
                raise HeapError(f"bad chunk {mfn:#x} order {order}")
            self._mark_free(mfn, order, need_scrub)
            zone = page_to_zone(mfn)
            self.avail[0, zone] += n
            self.total_avail_pages += n
            if need_scrub:
                self.node_need_scrub[0] += n
                if self.scrubber is None:  # no idle scrubber: now (module docstring)
                    self._scrub_range(mfn, mfn + n)
                else:
                    self.dirty_runs.append((mfn, mfn + n))
                    self.scrubber.kick()
            while order < MAX_ORDER:
                mask = 1 << order
                buddy = mfn - mask if mfn & mask else mfn + mask
                if page_to_zone(buddy) != zone or not self._is_free_head(buddy, order):
                    break
                del self.free[zone][order][buddy]
                self.ft.v[buddy] = 0
                mfn = min(mfn, buddy)
                order += 1
            self.ft.v[mfn] = order
            self.free[zone][order][mfn] = None

    def alloc_heap_pages(self, order: int, zone_lo: int = 1, zone_hi: int = NR_ZONES - 1):
        """Take an order-aligned chunk (highest zone first); returns its MFN or None."""
        if not 0 <= order <= MAX_ORDER:
            return None
        with self.lock:
            if self.total_avail_pages < (1 << order):
                return None
            for zone in range(min(zone_hi, NR_ZONES - 1), zone_lo - 1, -1):
                if self.avail[0, zone] < (1 << order):
                    continue
                lists = self.free[zone]
                for j in range(order, MAX_ORDER + 1):
                    if lists[j]:
                        mfn, _ = lists[j].popitem()
                        break
                else:
                    continue
                # Split: put the lower halves back, keep the upper part (as Xen does).
                while j > order:
                    j -= 1
                    self.ft.v[mfn] = j
                    lists[j][mfn] = None
                    mfn += 1 << j
                n = 1 << order
                self.avail[0, zone] -= n
                self.total_avail_pages -= n
                if self.node_need_scrub[0]:
                    self._scrub_range(mfn, mfn + n)  # alloc_heap_pages(): dirty pages first
                self.ft.words[mfn : mfn + n] = np.array([0, PGC_state_inuse, 0, 0], dtype=np.uint64)
                return mfn
            return None

    def init_heap_pages(self, start: int, count: int) -> None:
        """Hand a range of RAM to the buddy allocator (MFN 0 is kept away from it)."""
        start = max(start, 1)
        end = min(start + count, self.nr_frames)
        with self.lock:
            # Order-aligned chunks above MFN 0 never cross a zone boundary (zone = flsl).
            for mfn, order in aligned_chunks(start, end):
                self.free_heap_pages(mfn, order)

    def free_runs(self, mfns: np.ndarray, need_scrub: bool = True) -> None:
        """Free arbitrary frames: grouped into runs, then into aligned buddy chunks."""
        with self.lock:
            for start, end in runs_of(mfns):
                for m, o in aligned_chunks(start, end):
                    self.free_heap_pages(m, o, need_scrub=need_scrub)

    # ---- scrubbing ------------------------------------------------------------------------

    def _scrub_range(self, start: int, end: int) -> int:
        """Scrub the frames of [start, end) marked PGC_need_scrub and clear the mark; returns
        how many there were. Caller holds the lock."""
        ci = self.ft.count_info[start:end]
        dirty = (ci & np.uint64(PGC_need_scrub)) != 0
        n = int(np.count_nonzero(dirty))
        if not n:
            return 0
        if self.ram is not None:
            for s, e in runs_of(np.flatnonzero(dirty) + start):
                self.ram.scrub(s, e - s)
        ci[dirty] &= np.uint64(~PGC_need_scrub & 0xFFFFFFFFFFFFFFFF)
        self.node_need_scrub[0] -= n
        return n

    def mark_free_dirty(self) -> None:
        """bootscrub=idle: every free page of the boot heap needs scrubbing
        (init_heap_pages() before SYS_STATE_active, xen/common/page_alloc.c:1974-1975)."""
        with self.lock:
            ci = self.ft.count_info
            flag = np.uint64(PGC_need_scrub)
            heads, orders, _ = self.free_chunks()
            for h, o in sorted(zip(heads.tolist(), orders.tolist(), strict=True)):
                chunk = ci[h : h + (1 << o)]
                fresh = int(np.count_nonzero((chunk & flag) == 0))
                chunk |= flag
                self.node_need_scrub[0] += fresh
                self.dirty_runs.append((h, h + (1 << o)))

    def scrub_some(self, limit: int) -> int:
        """scrub_free_pages(): scrub at most `limit` frames of the queued dirty runs (one
        bounded chunk under the heap lock); returns how many frames it looked at."""
        with self.lock:
            seen = 0
            while self.dirty_runs and seen < limit:
                start, end = self.dirty_runs.popleft()
                stop = min(end, start + limit - seen)
                self._scrub_range(start, stop)
                seen += stop - start
                if stop < end:
                    self.dirty_runs.appendleft((stop, end))
            if not self.node_need_scrub[0]:
                self.dirty_runs.clear()
            return seen

    # ---- domheap / xenheap API --------------------------------------------------------

    def _zone_hi(self, memflags: int) -> int:
        bits = (memflags >> MEMF_bits_shift) & 0xFF
        return min(bits_to_zone(bits), NR_ZONES - 1) if bits else NR_ZONES - 1

    def alloc_domheap_pages(self, dom: Domain | None, order: int, memflags: int = 0):
        """One chunk; with a domain it is assigned (PGC_allocated|1, owner, tot_pages)."""
        with self.lock:
            n = 1 << order
            if dom is not None and (dom.is_dying or dom.tot_pages + n > dom.max_pages):
                return None  # assign_pages(): dying domain / Over-allocation
            mfn = self.alloc_heap_pages(order, 1, self._zone_hi(memflags))
            if mfn is None or dom is None:
                return mfn
            self.assign_pages(dom, np.arange(mfn, mfn + n))
            return mfn

    @staticmethod
    def _assigned_row(dom: Domain) -> np.ndarray:
        return np.array([0, PGC_allocated | 1, 0, owner_code(dom.domid)], dtype=np.uint64)

    def assign_pages(self, dom: Domain, mfns: np.ndarray) -> None:
        self.ft.count_info[mfns] = PGC_allocated | 1
        self.ft.type_info[mfns] = 0
        self.ft.v[mfns] = owner_code(dom.domid)
        dom.tot_pages += len(mfns)

    def free_domheap_pages(self, mfn: int, order: int) -> None:
        """Free a chunk (owned or anonymous); owned pages leave their domain's count."""
        with self.lock:
            n = 1 << order
            self._unassign(np.arange(mfn, mfn + n))
            self.free_runs(np.arange(mfn, mfn + n), need_scrub=True)

    def _unassign(self, mfns: np.ndarray) -> None:
        owners = self.ft.v[mfns]
        ci = self.ft.count_info[mfns]
        allocated = ((ci & PGC_allocated) != 0) & ((ci & PGC_xen_heap) == 0)
        for code in np.unique(owners[allocated & (owners != 0)]):
            dom = self.domain_lookup(int(code) - 1) if self.domain_lookup else None
            if dom is not None:
                dom.tot_pages -= int(np.count_nonzero((owners == code) & allocated))

    domain_lookup = None  # set by the machine: domid -> Domain | None

    def alloc_domheap_bulk(self, dom: Domain | None, count: int, memflags: int = 0):
        """`count` pages in as few chunks as possible; all or nothing. Returns MFNs or None."""
        with self.lock:
            if count <= 0:
                return np.zeros(0, dtype=np.int64)
            if dom is not None and (dom.is_dying or dom.tot_pages + count > dom.max_pages):
                return None
            if self.total_avail_pages < count:
                return None
            zone_hi = self._zone_hi(memflags)
            got: list[tuple[int, int]] = []
            left = count
            order = min(MAX_ORDER, left.bit_length() - 1)
            while left:
                order = min(order, left.bit_length() - 1)
                mfn = self.alloc_heap_pages(order, 1, zone_hi)
                if mfn is None:
                    if order == 0:
                        for m, o in got:  # roll back: a failed allocation takes nothing
                            self.free_heap_pages(m, o)
                        return None
                    order -= 1
                    continue
                got.append((mfn, order))
                left -= 1 << order
            if dom is not None:
                for m, o in got:  # contiguous chunks: slice writes, not scattered ones
                    self.ft.words[m : m + (1 << o)] = self._assigned_row(dom)
                dom.tot_pages += count
            return np.concatenate([np.arange(m, m + (1 << o)) for m, o in got])

    def alloc_xenheap_pages(self, order: int, memflags: int = 0):
        """x86-64: a domheap chunk flagged PGC_xen_heap, for the hypervisor's own use."""
        with self.lock:
            mfn = self.alloc_heap_pages(order, 1, self._zone_hi(memflags))
            if mfn is not None:
                self.ft.count_info[mfn : mfn + (1 << order)] = PGC_xen_heap
            return mfn

    def free_xenheap_pages(self, mfn: int, order: int) -> None:
        with self.lock:
            self.free_runs(np.arange(mfn, mfn + (1 << order)), need_scrub=True)

    def _last_put(self, mfn: int) -> None:
        # put_page() dropped the last reference: the page goes back to the heap.
        with self.lock:
            if self.ft.count_info[mfn] & PGC_allocated == 0:
                self.free_runs(np.array([mfn]), need_scrub=True)

    # ---- questions --------------------------------------------------------------------

    def avail_heap_pages(self, zone_lo: int, zone_hi: int) -> int:
        return int(self.avail[0, zone_lo : zone_hi + 1].sum())

    def free_chunks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every free chunk as arrays (head MFN, order, zone the list it is on)."""
        with self.lock:
            heads, orders, zones = [], [], []
            for z in range(NR_ZONES):
                for o in range(MAX_ORDER + 1):
                    lst = self.free[z][o]
                    if lst:
                        heads.append(np.fromiter(lst.keys(), dtype=np.int64, count=len(lst)))
                        orders.append(np.full(len(lst), o, dtype=np.int64))
                        zones.append(np.full(len(lst), z, dtype=np.int64))
            if not heads:
                e = np.zeros(0, dtype=np.int64)
                return e, e, e
            return np.concatenate(heads), np.concatenate(orders), np.concatenate(zones)
