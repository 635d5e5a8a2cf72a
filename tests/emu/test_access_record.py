"""The per-frame access record (emu/access/record.py): exact first touches from the shadow fault
path, the reset window (key Z's mechanism) through shadow A bits, and what survives `S`."""

from __future__ import annotations

import numpy as np
import pytest
from shadow_harness import ARENA_GFN, CODE_GFN, Guest, new_machine

from emu.audit import audit
from emu.shadow.audit import audit_shadows

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def guest():
    m = new_machine()
    return Guest(m, mem_mb=16)


def _gfns(arr: dict, key: str) -> set[int]:
    return {int(x) for x in np.flatnonzero(arr[key])}


def test_lifetime_record_and_first_touch_order(guest):
    g, m = guest, guest.machine
    g.touch(ARENA_GFN, 50, stride=2)
    g.touch(ARENA_GFN + 1, 10, stride=2, write=True)
    r = m.access.domain_arrays(g.dom)
    reads = {ARENA_GFN + 2 * i for i in range(50)}
    writes = {ARENA_GFN + 1 + 2 * i for i in range(10)}
    assert _gfns(r, "accessed") == reads | writes | {CODE_GFN}
    assert _gfns(r, "written") == writes
    ft = r["first_touch_ns"]
    order = [ARENA_GFN + 2 * i for i in range(50)] + [ARENA_GFN + 1 + 2 * i for i in range(10)]
    assert (np.diff(ft[order].astype(np.int64)) > 0).all()  # strictly in touch order
    before = ft.copy()
    g.touch(ARENA_GFN, 50, stride=2, write=True)  # writes after reads: first touch kept
    r = m.access.domain_arrays(g.dom)
    assert np.array_equal(r["first_touch_ns"], before)
    assert _gfns(r, "written") == reads | writes
    assert r["gfn"].size == g.nr_pages and r["mfn"][ARENA_GFN] == g.mfn(ARENA_GFN)


def test_reset_window_sees_accesses_through_present_shadows(guest):
    g, m = guest, guest.machine
    g.touch(ARENA_GFN, 100)
    m.access.reset_window(g.dom)
    r = m.access.domain_arrays(g.dom)
    assert not r["window"].any()
    assert r["accessed"].sum() == 101  # the lifetime count is kept
    f0 = m.perfc.total("shadow_fault")
    g.touch(ARENA_GFN + 10, 30)  # shadows are present: no faults, the hardware sets A
    assert m.perfc.total("shadow_fault") == f0
    r = m.access.domain_arrays(g.dom)
    assert _gfns(r, "window") == set(range(ARENA_GFN + 10, ARENA_GFN + 40)) | {CODE_GFN}
    assert r["accessed"].sum() == 101
    g.touch(ARENA_GFN + 200, 5)  # new pages in the window fault and count in both
    r = m.access.domain_arrays(g.dom)
    assert r["window"].sum() == 30 + 1 + 5 and r["accessed"].sum() == 106


def test_blow_tables_loses_no_window_or_lifetime_bit(guest):
    from keyhandlers.shadow import shadow_blow_all_tables

    g, m = guest, guest.machine
    g.touch(ARENA_GFN, 64, write=True)
    m.access.reset_window(g.dom)
    g.touch(ARENA_GFN + 7, 9)
    want = m.access.domain_arrays(g.dom)
    shadow_blow_all_tables(m, lambda _line: None, ())
    assert not g.dom.paging.shadow_l1_mfns().size
    got = m.access.domain_arrays(g.dom)
    for key in ("accessed", "written", "window", "first_touch_ns"):
        assert np.array_equal(got[key], want[key]), key
    assert audit(m) == [] and audit_shadows(m) == []


def test_reset_window_flushes_every_vcpu():
    m = new_machine()
    g = Guest(m, mem_mb=8, nr_vcpus=2)
    g.touch(ARENA_GFN, 8, vcpu=0)
    g.touch(ARENA_GFN + 8, 8, vcpu=1)
    fl = [v.tlb_flushes for v in g.vcpus]
    m.access.reset_window(g.dom)
    assert [v.tlb_flushes for v in g.vcpus] == [fl[0] + 1, fl[1] + 1]
    g.touch(ARENA_GFN + 4, 2, vcpu=1)  # through shadows vCPU 0 built: same l4 shadow
    r = m.access.domain_arrays(g.dom)
    assert _gfns(r, "window") == {ARENA_GFN + 4, ARENA_GFN + 5, CODE_GFN}


def test_records_are_cleared_for_frames_leaving_and_not_set_by_the_hypervisor(guest):
    g, m = guest, guest.machine
    g.touch(ARENA_GFN, 16)
    g.ram.read(g.mfn(ARENA_GFN + 100) << 12, 4096)  # hypervisor reads are not accesses
    assert m.access.accessed[g.mfn(ARENA_GFN + 100)] == 0
    top = g.nr_pages
    g.touch(top - 4, 4, write=True)
    gone = [g.mfn(x) for x in range(top - 4, top)]
    m.set_target(g.dom, top - 4)
    assert not m.access.accessed[gone].any() and not m.access.window[gone].any()
    r = m.access.domain_arrays(g.dom)
    assert not r["accessed"][top - 4 :].any() and r["accessed"].sum() == 17
