"""The frame table: Xen 4.22's 32-byte page_info layout, PGC_/PGT_ values, refcount rules."""

from __future__ import annotations

import numpy as np
import pytest

from emu.mm import page_info as P
from emu.mm.page_info import FrameTable, get_page, get_page_and_type, put_page, put_page_type


def test_layout_is_xens_32_bytes():
    dt = P.PAGE_INFO_DTYPE
    assert dt.itemsize == 32 == P.PAGE_INFO_BYTES
    offsets = {name: dt.fields[name][1] for name in dt.names}
    assert offsets == {
        "list_next": 0,
        "list_prev": 4,
        "count_info": 8,
        "type_info": 16,
        "v": 24,
        "tlbflush": 28,
    }
    ft = FrameTable(1024)
    assert ft.nbytes == 1024 * 32
    assert ft.pi.strides == (32,)


def test_pgc_values_match_xen_4_22():
    assert P.PGC_allocated == 0x8000000000000000
    assert P.PGC_xen_heap == 0x4000000000000000
    assert P.PGC_extra == 0x2000000000000000
    assert P.PGC_broken == 0x1000000000000000
    assert P.PGC_state == 0x0C00000000000000
    assert (P.PGC_state_inuse, P.PGC_state_offlining) == (0, 0x0400000000000000)
    assert (P.PGC_state_offlined, P.PGC_state_free) == (0x0800000000000000, 0x0C00000000000000)
    assert P.PGC_need_scrub == 0x0200000000000000
    assert P.PGC_shadowed_pt == 0x0100000000000000
    assert P.PGC_count_mask == 0x00FFFFFFFFFFFFFF


def test_pgt_values_match_xen_4_22():
    assert P.PGT_l1_page_table == 0x2000000000000000
    assert P.PGT_l4_page_table == 0x8000000000000000
    assert P.PGT_seg_desc_page == 0xA000000000000000
    assert P.PGT_shared_page == 0xC000000000000000
    assert P.PGT_writable_page == 0xE000000000000000 == P.PGT_type_mask
    assert P.PGT_locked == 0x1000000000000000
    assert P.PGT_pinned == 0x0800000000000000
    assert P.PGT_validated == 0x0400000000000000
    assert P.PGT_pae_xen_l2 == 0x0200000000000000
    assert P.PGT_partial == 0x0100000000000000
    assert P.PGT_non_coherent == 0x0080000000000000
    assert P.PGT_count_mask == 0x007FFFFFFFFFFFFF


def owned_table(domid=3):
    ft = FrameTable(64)
    ft.count_info[:] = P.PGC_state_free
    ft.count_info[10] = P.PGC_allocated | 1
    ft.v[10] = P.owner_code(domid)
    return ft


def test_mfn_to_page_reader_and_owner():
    ft = owned_table()
    pg = ft.mfn_to_page(10)
    assert (pg.mfn, pg.count, pg.state, pg.owner) == (10, 1, "inuse", 3)
    assert str(pg) == "mfn a: caf=8000000000000001, taf=0000000000000000"
    assert ft.owner(10) == 3 and ft.owner(11) is None
    assert ft.page(11).state == "free"
    assert list(ft.owned_by(3)) == [10]
    with pytest.raises(IndexError):
        ft.page(64)


def test_get_page_refuses_free_pages_and_foreign_owner():
    ft = owned_table()
    assert not get_page(ft, 11, 3)  # free: count 0
    assert not get_page(ft, 10, 4)  # someone else's
    assert int(ft.count_info[10]) & P.PGC_count_mask == 1  # a failed get takes nothing
    assert get_page(ft, 10, 3)
    assert int(ft.count_info[10]) == P.PGC_allocated | 2
    assert not get_page(ft, 99, 3)


def test_put_page_frees_on_last_reference():
    ft = owned_table()
    freed = []
    ft.on_last_put = freed.append
    assert get_page(ft, 10, 3)
    put_page(ft, 10)
    assert freed == []
    ft.count_info[10] &= ~np.uint64(P.PGC_allocated)  # the guest dropped the allocation ref
    put_page(ft, 10)
    assert freed == [10]
    with pytest.raises(ValueError):
        put_page(ft, 10)


def test_type_refs_change_type_only_at_count_zero():
    ft = owned_table()
    assert get_page_and_type(ft, 10, 3, P.PGT_writable_page)
    ti = int(ft.type_info[10])
    assert ti == P.PGT_writable_page | P.PGT_validated | 1
    # A writable page cannot become a page table while typed (PV invariant).
    assert not get_page_and_type(ft, 10, 3, P.PGT_l1_page_table)
    assert int(ft.count_info[10]) & P.PGC_count_mask == 2  # the failed call dropped its ref
    put_page_type(ft, 10)
    assert get_page_and_type(ft, 10, 3, P.PGT_l1_page_table)
    assert int(ft.type_info[10]) & P.PGT_type_mask == P.PGT_l1_page_table
    put_page_type(ft, 10)
    assert int(ft.type_info[10]) & P.PGT_validated == 0  # page tables revalidate on reuse
