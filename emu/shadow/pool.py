"""The per-domain shadow pool (common.c: shadow_set_allocation, shadow_alloc, shadow_free).

Pool frames are anonymous domheap pages (count_info 0, no owner). A free pool frame has
type_info 0 (SH_type_none); a frame in use as a shadow has type_info = type | pinned<<5 |
head<<6 | count<<7 and v = back-pointer (guest MFN), as docs/design.md encodes `u.sh`/`v.sh`.
The Python dicts here mirror those fields for the fault path; every change writes both.
"""

from __future__ import annotations

import numpy as np

# u.sh bit positions in type_info (type:5, pinned:1, head:1, count:rest).
SH_PINNED_SHIFT = 5
SH_HEAD_SHIFT = 6
SH_COUNT_SHIFT = 7


def default_pool_pages(dom) -> int:
    """libxl's shadow allocation: 1 MiB per vCPU + 4 KiB (P2M) + 4 KiB (shadow) per MiB of RAM.

    shadow_enable() makes it at least 1024 pages ("Use at least 4MB").
    """
    spec = dom.spec
    vcpus = len(dom.vcpus) or (spec.vcpus if spec is not None else 1)
    mem_mb = max(dom.max_pages, dom.tot_pages) >> 8
    if mem_mb > (1 << 32):  # DOMID_UNLIMITED_MAX_PAGES: fall back to tot_pages
        mem_mb = dom.tot_pages >> 8
    return max(1024, 256 * vcpus + 2 * mem_mb)


class ShadowPool:
    """Frames lent to one domain's shadows, and the `u.sh` header of each in-use one."""

    def __init__(self, machine, pages: int, perfc) -> None:
        self.machine = machine
        ft = machine.frames.pi
        self.f_count = ft["count_info"]
        self.f_type = ft["type_info"]
        self.f_v = ft["v"]
        self.f_tlb = ft["tlbflush"]
        self.u64 = machine.ram.u64
        self.pc = perfc
        self.frames: list[int] = []  # every frame of the pool
        self.freelist: list[int] = []
        # u.sh of in-use shadows
        self.type: dict[int, int] = {}
        self.count: dict[int, int] = {}
        self.back: dict[int, int] = {}
        self.pinned: dict[int, None] = {}  # ordered: oldest pin first
        self.set_allocation(pages)

    @property
    def total_pages(self) -> int:
        return len(self.frames)

    @property
    def free_pages(self) -> int:
        return len(self.freelist)

    def set_allocation(self, pages: int) -> int:
        """Grow the pool to `pages` frames from the heap (anonymous); returns the new size.

        Shrinking gives back free frames only (the caller reclaims shadows first).
        """
        heap = self.machine.heap
        want = pages - len(self.frames)
        if want > 0:
            got = heap.alloc_domheap_bulk(None, want)
            if got is None:  # not all at once: as many single pages as the heap has
                got = []
                while len(got) < want and (m := heap.alloc_domheap_pages(None, 0)) is not None:
                    got.append(m)
            new = [int(m) for m in got]
            for mfn in new:
                self._mark_free(mfn)
            self.frames.extend(new)
            self.freelist.extend(reversed(new))  # pop() hands out low frames first
        gone = []
        while len(self.frames) - len(gone) > pages and self.freelist:
            gone.append(self.freelist.pop())
        if gone:
            drop = set(gone)
            self.frames = [m for m in self.frames if m not in drop]
            self._release(np.array(gone, dtype=np.int64))
        return len(self.frames)

    def _mark_free(self, mfn: int) -> None:
        self.f_count[mfn] = 0
        self.f_type[mfn] = 0
        self.f_v[mfn] = 0
        self.f_tlb[mfn] = 0

    def _release(self, mfns: np.ndarray) -> None:
        """Back to the heap, scrubbed (anonymous pages: no domain accounting)."""
        for mfn in mfns.tolist():
            self._mark_free(mfn)
        self.machine.heap.free_runs(np.sort(mfns), need_scrub=True)

    def sync(self, smfn: int) -> None:
        """Write the u.sh header of `smfn` into the frame table."""
        self.f_type[smfn] = (
            self.type[smfn]
            | ((smfn in self.pinned) << SH_PINNED_SHIFT)
            | (1 << SH_HEAD_SHIFT)
            | (self.count[smfn] << SH_COUNT_SHIFT)
        )

    def alloc(self, shadow_type: int, back: int, cpu: list[int]) -> int:
        """shadow_alloc(): take a zeroed frame off the free list (caller preallocated)."""
        pc = self.pc
        cpu[pc.index["shadow_alloc"]] += 1
        cpu[pc.index["shadow_alloc_count"]] += 1
        smfn = self.freelist.pop()
        self.u64[smfn << 9 : (smfn + 1) << 9] = 0
        self.type[smfn] = shadow_type
        self.count[smfn] = 0
        self.back[smfn] = back
        self.f_count[smfn] = 0
        self.f_v[smfn] = back
        self.sync(smfn)
        return smfn

    def free(self, smfn: int, cpu: list[int]) -> None:
        """shadow_free(): back to the free list, u.sh cleared (type none)."""
        pc = self.pc
        cpu[pc.index["shadow_free"]] += 1
        cpu[pc.index["shadow_alloc_count"]] -= 1
        del self.type[smfn], self.count[smfn], self.back[smfn]
        self.pinned.pop(smfn, None)
        self._mark_free(smfn)
        self.freelist.append(smfn)

    def release_all(self) -> None:
        """Give every pool frame back to the heap (teardown); in-use shadows are dropped."""
        cpu = self.pc.cpu[0]
        cpu[self.pc.index["shadow_alloc_count"]] -= len(self.type)
        self.type.clear()
        self.count.clear()
        self.back.clear()
        self.pinned.clear()
        self._release(np.array(self.frames, dtype=np.int64))
        self.frames.clear()
        self.freelist.clear()

    def mfns(self) -> np.ndarray:
        return np.array(self.frames, dtype=np.uint64)

    def in_use_of_type(self, shadow_type: int) -> np.ndarray:
        return np.array([m for m, t in self.type.items() if t == shadow_type], dtype=np.int64)
