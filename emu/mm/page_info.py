"""The frame table: one `struct page_info` (32 bytes) per machine frame, Xen 4.22 layout.

`FrameTable.pi` is a numpy structured array with Xen's x86-64 layout (asm/mm.h):

    offset 0  list_next u4 | list_prev u4   (struct page_list_entry, PDX links)
    offset 8  count_info u8                 (PGC_* flags + general reference count)
    offset 16 type_info u8                  (union u: inuse.type_info / sh header / free)
    offset 24 v u4                          (union v: owner / sh.back / free.order)
    offset 28 tlbflush u4                   (tlbflush_timestamp / shadow_flags / next_shadow)

Owner encoding in `v` for in-use pages: domid + 1 (0 = anonymous), standing in for Xen's
compressed `struct domain` pointer. Every whole-table question is a numpy expression.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# count_info (xen/arch/x86/include/asm/mm.h, 4.22)
PGC_allocated = 1 << 63
PGC_xen_heap = 1 << 62
PGC_extra = 1 << 61
PGC_broken = 1 << 60
PGC_state = 3 << 58
PGC_state_inuse = 0 << 58
PGC_state_offlining = 1 << 58
PGC_state_offlined = 2 << 58
PGC_state_free = 3 << 58
PGC_need_scrub = 1 << 57
PGC_shadowed_pt = 1 << 56
PGC_count_width = 56
PGC_count_mask = (1 << PGC_count_width) - 1

# type_info
PGT_none = 0 << 61
PGT_l1_page_table = 1 << 61
PGT_l2_page_table = 2 << 61
PGT_l3_page_table = 3 << 61
PGT_l4_page_table = 4 << 61
PGT_seg_desc_page = 5 << 61
PGT_shared_page = 6 << 61
PGT_writable_page = 7 << 61
PGT_type_mask = 7 << 61
PGT_locked = 1 << 60
PGT_pinned = 1 << 59
PGT_validated = 1 << 58
PGT_pae_xen_l2 = 1 << 57
PGT_partial = 1 << 56
PGT_non_coherent = 1 << 55
PGT_count_width = 55
PGT_count_mask = (1 << PGT_count_width) - 1

PAGE_INFO_DTYPE = np.dtype(
    [
        ("list_next", "<u4"),
        ("list_prev", "<u4"),
        ("count_info", "<u8"),
        ("type_info", "<u8"),
        ("v", "<u4"),
        ("tlbflush", "<u4"),
    ]
)
assert PAGE_INFO_DTYPE.itemsize == 32
PAGE_INFO_BYTES = PAGE_INFO_DTYPE.itemsize

OWNER_NONE = 0


def owner_code(domid: int | None) -> int:
    """The value stored in `v` for a page owned by `domid` (None = anonymous)."""
    return OWNER_NONE if domid is None else domid + 1


def state_name(count_info: int) -> str:
    return ("inuse", "offlining", "offlined", "free")[(count_info & PGC_state) >> 58]


@dataclass(frozen=True)
class PageInfo:
    """A read-only copy of one frame's page_info, as a Xen engineer would print it."""

    mfn: int
    count_info: int
    type_info: int
    v: int
    tlbflush: int
    list_next: int
    list_prev: int

    @property
    def state(self) -> str:
        return state_name(self.count_info)

    @property
    def count(self) -> int:
        return self.count_info & PGC_count_mask

    @property
    def type_count(self) -> int:
        return self.type_info & PGT_count_mask

    @property
    def owner(self) -> int | None:
        """Owning domid for in-use pages (None = anonymous or not in use)."""
        if self.state != "inuse" or self.v == OWNER_NONE:
            return None
        return self.v - 1

    def __str__(self) -> str:
        return f"mfn {self.mfn:x}: caf={self.count_info:08x}, taf={self.type_info:016x}"


class FrameTable:
    """`frame_table[]`, indexed by MFN (no PDX compression: pdx == pfn)."""

    def __init__(self, nr_frames: int) -> None:
        self.nr_frames = nr_frames
        # An anonymous mapping (zero-filled) with transparent huge pages where the kernel
        # allows them: a 64 GiB host has a 512 MiB table, touched in full at boot.
        self._mm = mmap.mmap(-1, max(nr_frames, 1) * PAGE_INFO_BYTES)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                self._mm.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        self.pi = np.frombuffer(self._mm, dtype=PAGE_INFO_DTYPE, count=nr_frames)
        # The same bytes as 4 u64 words per frame (list | count_info | type_info | v+tlbflush)
        # for writing whole records at once.
        self.words = self.pi.view(np.uint64).reshape(-1, 4)
        # count_info's top byte (all PGC_ flag bits) as a strided uint8 view.
        self.flags = self.pi.view(np.uint8).reshape(-1, PAGE_INFO_BYTES)[:, 15]
        # Field views (strided into pi, no copies).
        self.count_info = self.pi["count_info"]
        self.type_info = self.pi["type_info"]
        self.v = self.pi["v"]
        self.tlbflush = self.pi["tlbflush"]
        # Called by put_page() when the last reference goes (the heap frees the page).
        self.on_last_put: Callable[[int], None] | None = None

    @property
    def nbytes(self) -> int:
        return self.pi.nbytes

    def mfn_valid(self, mfn: int) -> bool:
        return 0 <= mfn < self.nr_frames

    def page(self, mfn: int) -> PageInfo:
        """mfn_to_page(): a snapshot of one frame's page_info."""
        if not self.mfn_valid(mfn):
            raise IndexError(f"mfn {mfn:#x} out of range")
        r = self.pi[mfn]
        return PageInfo(
            mfn,
            int(r["count_info"]),
            int(r["type_info"]),
            int(r["v"]),
            int(r["tlbflush"]),
            int(r["list_next"]),
            int(r["list_prev"]),
        )

    mfn_to_page = page

    def owner(self, mfn: int) -> int | None:
        """page_get_owner(): domid of an in-use page, None if anonymous, free or Xen's."""
        ci = int(self.count_info[mfn])
        if ci & PGC_state != PGC_state_inuse:
            return None
        v = int(self.v[mfn])
        return None if v == OWNER_NONE else v - 1

    def owned_by(self, domid: int) -> np.ndarray:
        """Every MFN a domain owns (its page list, derived from the owner field)."""
        code = owner_code(domid)
        ci = self.count_info
        mask = (self.v == code) & ((ci & (PGC_state | PGC_xen_heap)) == PGC_state_inuse)
        mask &= (ci & PGC_allocated) != 0
        return np.flatnonzero(mask)

    def xenpages_of(self, domid: int) -> np.ndarray:
        """Xen-heap pages shared with a domain (d->xenpage_list), e.g. its shared_info."""
        ci = self.count_info
        return np.flatnonzero((self.v == owner_code(domid)) & ((ci & PGC_xen_heap) != 0))


def get_page(ft: FrameTable, mfn: int, domid: int) -> bool:
    """Take a general reference on a page owned by `domid` (xen/arch/x86/mm.c get_page())."""
    if not ft.mfn_valid(mfn):
        return False
    ci = int(ft.count_info[mfn])
    count = ci & PGC_count_mask
    # Refuse free pages (count 0) and overflow of the count field.
    if count == 0 or count + 1 >= PGC_count_mask or ci & PGC_state != PGC_state_inuse:
        return False
    if int(ft.v[mfn]) != owner_code(domid):
        return False
    ft.count_info[mfn] = ci + 1
    return True


def put_page(ft: FrameTable, mfn: int) -> None:
    """Drop a general reference; the page is freed when the last one goes."""
    ci = int(ft.count_info[mfn])
    if ci & PGC_count_mask == 0:
        raise ValueError(f"put_page on mfn {mfn:#x} with no references")
    ft.count_info[mfn] = ci - 1
    if (ci - 1) & PGC_count_mask == 0 and ft.on_last_put is not None:
        ft.on_last_put(mfn)


def get_page_type(ft: FrameTable, mfn: int, type_: int) -> bool:
    """Take a type reference: the type may change only while the type count is 0."""
    ti = int(ft.type_info[mfn])
    count = ti & PGT_count_mask
    if count == 0:
        if (ti & PGT_type_mask) != type_:
            ti = type_  # new type; not validated until first use
        ft.type_info[mfn] = ti | PGT_validated | 1
        return True
    if (ti & PGT_type_mask) != type_ or count + 1 >= PGT_count_mask:
        return False
    ft.type_info[mfn] = ti + 1
    return True


def put_page_type(ft: FrameTable, mfn: int) -> None:
    ti = int(ft.type_info[mfn])
    if ti & PGT_count_mask == 0:
        raise ValueError(f"put_page_type on mfn {mfn:#x} with no type references")
    ti -= 1
    if ti & PGT_count_mask == 0 and (ti & PGT_type_mask) not in (PGT_none, PGT_writable_page):
        ti &= ~PGT_validated  # page-table types are revalidated on next use
    ft.type_info[mfn] = ti


def get_page_and_type(ft: FrameTable, mfn: int, domid: int, type_: int) -> bool:
    if not get_page(ft, mfn, domid):
        return False
    if not get_page_type(ft, mfn, type_):
        put_page(ft, mfn)
        return False
    return True
