"""Linear ("recursive") page tables of PV guests: xen/arch/x86/mm.c:596-760, built with
CONFIG_PV_LINEAR_PT=y and `pv-linear-pt` on, Xen 4.22's defaults (Kconfig, mm.c:665).

An L2/L3/L4 entry may point at a table of its own level if it is read-only:
- to the table holding it (a self-map): no reference is taken, none is dropped;
- to another, already validated table of the same level, owned by the same domain: one
  general and one type reference, as any entry holds, and `linear_pt_count` records it, on
  the holding table as a count of linear entries (> 0) and on the mapped table as a count of
  linear uses (< 0). A table cannot be both, so linear mappings never chain.
A writable such entry is refused with Xen's "Attempt to create linear p.t. with write perms".
"""

from __future__ import annotations

from emu.mm.page_info import PGT_count_mask, PGT_type_mask, PGT_validated

_PAGE_RW = 0x2
ADDR_MASK = 0x000FFFFFFFFFF000
LINEAR_MAX = 0x7FFF  # linear_pt_count is a signed 16-bit field
# __LINE__ of each define_get_linear_pagetable(lN) use in mm.c: its gdprintk()s report it.
DEFINE_LINE = {2: 1116, 3: 1140, 4: 1164}


def get_linear(pvmm, e: int, level: int, table: int, dom) -> bool:
    """get_lN_linear_pagetable() (mm.c:668-738): may `e` in `table` map a table of its level?"""
    if e & _PAGE_RW:
        pvmm.gdprintk(DEFINE_LINE[level], "Attempt to create linear p.t. with write perms", dom)
        return False
    mfn = (e & ADDR_MASK) >> 12
    if mfn == table:
        return True
    if pvmm.owner(table) != dom.domid or not pvmm.get_page(mfn, dom):
        return False
    linear = pvmm.linear
    entries = linear.get(table, 0)
    if entries < 0 or entries >= LINEAR_MAX:  # inc_linear_entries(): used as linear itself
        pvmm.put_page(mfn)
        return False
    uses = linear.get(mfn, 0)
    if uses > 0 or uses <= -LINEAR_MAX:  # inc_linear_uses(): has linear entries itself
        pvmm.put_page(mfn)
        return False
    ft = pvmm.ft
    ti = int(ft.type_info[mfn])
    want = (level << 61) | PGT_validated
    if ti & PGT_count_mask == PGT_count_mask or ti & (PGT_type_mask | PGT_validated) != want:
        pvmm.put_page(mfn)
        return False
    linear[table], linear[mfn] = entries + 1, uses - 1
    ft.type_info[mfn] = ti + 1
    return True


def is_linear(pvmm, mfn: int, table: int) -> bool:
    """PGT_type_equal(mapped, holding table): the entry being dropped is a linear one."""
    ft = pvmm.ft
    return not (int(ft.type_info[mfn]) ^ int(ft.type_info[table])) & PGT_type_mask


def put_linear(pvmm, mfn: int, table: int) -> None:
    """dec_linear_uses() / dec_linear_entries() (mm.c:621-652), as _put_page_type() does."""
    linear = pvmm.linear
    for m, step in ((mfn, 1), (table, -1)):
        n = linear.get(m, 0) + step
        if n:
            linear[m] = n
        else:
            linear.pop(m, None)
