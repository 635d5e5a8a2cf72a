"""x86-64 paging facts, one home for each (xen/arch/x86/include/asm/page.h, x86_64/page.h).

Page sizes, the bits of a page-table entry, the address bits an entry holds, the invalid
frame numbers, and the index of a virtual address in the table of each level. Hot paths
(the shadow fault path) bind these to locals; they never look them up per access.
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_OFFSET_MASK = PAGE_SIZE - 1  # the offset of an address inside its page
PADDR_BITS = 52  # physical address bits (x86_64/page.h)
PAGETABLE_ORDER = 9  # 512 entries per table
L1_PAGETABLE_SHIFT, L2_PAGETABLE_SHIFT, L3_PAGETABLE_SHIFT, L4_PAGETABLE_SHIFT = 12, 21, 30, 39

# The frame address bits of a page-table entry: bits 12..51 (PADDR_MASK & PAGE_MASK).
PTE_ADDR_MASK = ((1 << PADDR_BITS) - 1) & ~PAGE_OFFSET_MASK
MAX_GFN = (1 << (PADDR_BITS - PAGE_SHIFT)) - 1  # the last frame a 52-bit address can name

# Page-table entry flags (asm/x86_64/page.h, asm/page.h).
_PAGE_PRESENT = 0x001
_PAGE_RW = 0x002
_PAGE_USER = 0x004
_PAGE_ACCESSED = 0x020
_PAGE_DIRTY = 0x040
_PAGE_PSE = 0x080
_PAGE_NX = 1 << 63

# INVALID_MFN / INVALID_GFN (xen/mm-frame.h): ~0 as a 64-bit frame number.
INVALID_MFN = (1 << 64) - 1
INVALID_GFN = INVALID_MFN


def pages_for_bytes(n: int) -> int:
    """PFN_UP(): pages needed to hold `n` bytes."""
    return (n + PAGE_SIZE - 1) >> PAGE_SHIFT


def table_offset(va: int, level: int) -> int:
    """l{level}_table_offset(va): the index of `va` in a table of that level (1..4)."""
    return (va >> (PAGE_SHIFT + PAGETABLE_ORDER * (level - 1))) & ((1 << PAGETABLE_ORDER) - 1)


def pte_mfn(pte: int) -> int:
    """The frame number an entry points at (l1e_get_pfn)."""
    return (pte & PTE_ADDR_MASK) >> PAGE_SHIFT
