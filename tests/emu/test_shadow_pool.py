"""The shadow pool: frames from the heap, recycling under pressure, the hash, unshadowing
on balloon-down, teardown on destroy, and the machine audit before and after."""

from __future__ import annotations

import numpy as np
import pytest
from shadow_harness import ARENA_GFN, PT_GFN, A, Guest, new_machine

from emu.audit import audit
from emu.shadow.audit import audit_shadows
from emu.shadow.hash import SHADOW_HASH_BUCKETS, sh_hash
from emu.shadow.multi import shadow_l1e_index
from emu.shadow.private import SH_type_l1_64_shadow, SH_type_l4_64_shadow

pytestmark = pytest.mark.timeout(60)


def _clean(m) -> None:
    assert audit(m) == []
    assert audit_shadows(m) == []


def _sh_hash_c(n: int, t: int) -> int:
    """xen/arch/x86/mm/shadow/common.c sh_hash(), transcribed with explicit u32 wrap."""
    k = t
    for _ in range((52 - 12 + 7) // 8):
        k = ((n & 0xFF) + (k << 6) + (k << 16) - k) % (1 << 32)
        n >>= 8
    return k % 251


def test_sh_hash_matches_xen():
    rng = np.random.default_rng(7)
    for n in [0, 1, 0xFF, 0x12345, (1 << 40) - 1, *rng.integers(0, 1 << 40, 200).tolist()]:
        for t in (7, 9, 11, 12):
            assert sh_hash(n, t) == _sh_hash_c(n, t)
    assert SHADOW_HASH_BUCKETS == 251


def test_pool_comes_from_the_heap_and_goes_back_on_destroy():
    m = new_machine()
    avail0 = m.heap.total_avail_pages
    g = Guest(m, mem_mb=8, pool_pages=64)
    sd = g.dom.paging
    assert sd.total_pages == 64 and len(sd.pool_mfns()) == 64
    assert avail0 - m.heap.total_avail_pages == 8 * 256 + 1 + 64  # memory, shared_info, pool
    g.touch(ARENA_GFN, 100, write=True)
    _clean(m)
    touched = np.array([g.mfn(x) for x in range(ARENA_GFN, ARENA_GFN + 100)])
    assert m.access.accessed[touched].all()
    pool = sd.pool_mfns().astype(np.int64)
    m.destroy_domain(g.dom)
    assert m.heap.total_avail_pages == avail0
    assert not m.access.accessed[touched].any() and not m.access.written[touched].any()
    assert (m.frames.type_info[pool] == 0).all()
    assert sd.total_pages == 0
    _clean(m)


def test_default_pool_size_follows_libxl():
    m = new_machine()
    g = Guest(m, mem_mb=8)
    assert g.dom.paging.total_pages == 1024  # "Use at least 4MB"


def test_exhaustion_recycles_in_use_shadows():
    m = new_machine()
    g = Guest(m, mem_mb=16, pool_pages=6)
    sd = g.dom.paging
    pc = m.perfc
    r0 = pc.total("shadow recycles in-use shadows")
    # One page in each of the 8 guest L1 tables: 3 upper + 8 L1 shadows > 6 frames.
    g.touch(ARENA_GFN, 7, stride=512, write=True)
    assert pc.total("shadow recycles in-use shadows") > r0
    assert sd.total_pages == 6 and sd.free_pages >= 0
    ptes = [g.pte(ARENA_GFN + 512 * i) for i in range(7)]
    assert all(p & A for p in ptes)
    _clean(m)


def test_exhaustion_recycles_old_pinned_top_levels_first():
    m = new_machine()
    g = Guest(m, mem_mb=16, pool_pages=8)
    sd = g.dom.paging
    pc = m.perfc
    v = g.vcpus[0]
    g.touch(ARENA_GFN, 3)
    # A second guest L4 (a copy: same L3 below), loaded as the vCPU's new CR3.
    g.q(PT_GFN + 60)[:] = g.q(PT_GFN)
    v.load_cr3((PT_GFN + 60) << 12)
    old_l4 = sd.hash.map[(g.mfn(PT_GFN), SH_type_l4_64_shadow)]
    assert old_l4 in sd.pool.pinned and sd.pool.count[old_l4] == 1  # only the pin holds it
    u0 = pc.total("shadow recycles old shadows")
    g.touch(ARENA_GFN, 5, stride=512)
    assert pc.total("shadow recycles old shadows") > u0
    assert (g.mfn(PT_GFN), SH_type_l4_64_shadow) not in sd.hash.map  # unpinned and freed
    _clean(m)


def test_pool_too_small_for_one_chain_crashes_cleanly():
    m = new_machine()
    g = Guest(m, mem_mb=8, pool_pages=3)
    v = g.vcpus[0]
    entry, until = g.load("nop")
    v.run(entry, until)
    assert v.events[-1][0] == "crash"
    assert g.dom.paging.crash_reason == "shadow pool exhausted"
    assert b"Can't pre-allocate 3 shadow pages!" in m.console.ring.read()
    _clean(m)


def test_balloon_down_removes_mappings_and_access_records():
    m = new_machine()
    g = Guest(m, mem_mb=8)
    sd = g.dom.paging
    top = g.nr_pages
    first = top - 64  # the balloon takes the highest unreserved gfns
    g.touch(first, 64, write=True)
    mfns = np.array([g.mfn(x) for x in range(first, top)])
    assert m.access.written[mfns].all()
    assert all(shadow_l1e_index(sd, 0, x << 12) is not None for x in (first, top - 1))
    m.set_target(g.dom, top - 64)
    assert g.dom.tot_pages == top - 64
    for x in range(first, top):
        i = shadow_l1e_index(sd, 0, x << 12)
        assert i is None or m.ram.u64[i] == 0
    assert not m.access.accessed[mfns].any() and not m.access.first_touch_ns[mfns].any()
    assert m.perfc.total("shadow removes all mappings") >= 1
    _clean(m)
    # The guest's tables still map those gfns: an access now is a bad gfn, the domain crashes.
    v = g.vcpus[0]
    entry, until = g.load(f"mov rsi, {first << 12:#x}\nmov al, byte ptr [rsi]")
    v.run(entry, until)
    assert v.events[-1][0] == "crash"


def test_balloon_down_of_a_page_table_frame_unshadows_it():
    m = new_machine()
    g = Guest(m, mem_mb=8)
    sd = g.dom.paging
    g.touch(ARENA_GFN, 2)
    l1 = g.l1_gfns[ARENA_GFN >> 9]
    gmfn = g.mfn(l1)
    assert (gmfn, SH_type_l1_64_shadow) in sd.hash.map
    g.dom.reserved_gfns.discard(l1)
    from emu.mm.memory import decrease_reservation

    decrease_reservation(m, g.dom, np.array([l1]))
    assert (gmfn, SH_type_l1_64_shadow) not in sd.hash.map
    assert m.perfc.total("shadow unshadows a page") >= 1
    assert gmfn not in sd.shadow_flags
    _clean(m)


def test_balloon_takes_the_top_level_table_in_cr3():
    """The guest's own L4 (an arena page here) is ballooned out while in its CR3."""
    m = new_machine()
    g = Guest(m, mem_mb=8)
    sd = g.dom.paging
    v = g.vcpus[0]
    top = g.nr_pages - 1
    g.q(top)[:] = g.q(PT_GFN)  # a copy of its L4 in the highest gfn, loaded as CR3
    v.load_cr3(top << 12)
    g.touch(ARENA_GFN, 4)
    sl4 = sd.toplevel[0]
    gone = g.mfn(top)
    m.set_target(g.dom, g.nr_pages - 1)
    assert sl4 in sd.orphans and not m.ram.u64[sl4 << 9 : (sl4 + 1) << 9].any()
    assert gone not in sd.shadow_flags
    _clean(m)
    entry, until = g.load("nop")
    v.run(entry, until)
    assert v.events[-1][0] == "crash" and "left the domain" in sd.crash_reason
    v.load_cr3(PT_GFN << 12)  # a new CR3 frees the orphan
    assert sl4 not in sd.pool.type and not sd.orphans
    g.touch(ARENA_GFN, 4)
    _clean(m)
