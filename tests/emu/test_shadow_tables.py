"""The shadow tables themselves on real Unicorn (tests/shadow_harness.py): invlpg drops an
entry, the frame-table encoding of shadow pages, blowing the tables away (guests refault),
and the perf-counter keys p/P."""

from __future__ import annotations

import numpy as np
import pytest
from shadow_harness import (
    ARENA_GFN,
    PT_GFN,
    RW,
    Guest,
    P,
    arena_ptes,
    assert_clean,
    sl1e,
)

from emu.mm.page_info import PGC_shadowed_pt
from emu.shadow.hash import sh_hash
from emu.shadow.private import (
    SH_type_l1_64_shadow,
    SH_type_l2_64_shadow,
    SH_type_l3_64_shadow,
    SH_type_l4_64_shadow,
)

# The harness builds its own guest tables on a machine that is not booted.
pytestmark = [pytest.mark.timeout(60), pytest.mark.machine(memory=1 << 30, boot=False, shared=True)]


def test_invlpg_drops_the_entry(machine):
    g = Guest(machine, name="inv")
    x = ARENA_GFN + 9
    g.touch(x, 1)
    assert sl1e(g, x) & P
    fl0 = g.vcpus[0].tlb_flushes
    g.dom.paging.invlpg(g.vcpus[0], x << 12)
    assert sl1e(g, x) == 0 and g.vcpus[0].tlb_flushes == fl0 + 1
    f0 = machine.perfc.total("shadow_fault")
    g.touch(x, 1)
    assert machine.perfc.total("shadow_fault") - f0 == 1
    assert_clean(machine)


def test_frame_table_encoding_of_shadows(machine):
    g = Guest(machine, name="ft")
    sd = g.dom.paging
    g.touch(ARENA_GFN, 600)  # spans two guest L1 tables
    fr = machine.frames
    types = {SH_type_l4_64_shadow: 1, SH_type_l3_64_shadow: 1, SH_type_l2_64_shadow: 1}
    for smfn, t in sd.pool.type.items():
        ti = int(fr.type_info[smfn])
        assert int(fr.count_info[smfn]) == 0
        assert ti & 31 == t and (ti >> 6) & 1 == 1
        assert ti >> 7 == sd.pool.count[smfn]
        assert (ti >> 5) & 1 == (t == SH_type_l4_64_shadow)  # only the l4 is pinned
        back = int(fr.v[smfn])
        assert fr.tlbflush[back] & (1 << t)
        assert int(fr.count_info[back]) & PGC_shadowed_pt
        assert smfn in sd.hash.chain(sh_hash(back, t))
        types[t] = types.get(t, 0) + (t == SH_type_l1_64_shadow)
    # the guest tables used: L4, L3, L2, the L1s of code (gfn 0x10), arena 0x100-0x357
    assert sorted(sd.pool.type.values()).count(SH_type_l1_64_shadow) == 2
    assert int(fr.v[sd.toplevel[0]]) == g.mfn(PT_GFN)
    for smfn in sd.pool.freelist:
        assert int(fr.type_info[smfn]) == 0 and int(fr.v[smfn]) == 0
    assert_clean(machine)


def test_blow_tables_returns_every_shadow_and_guests_refault(machine):
    from keyhandlers.shadow import shadow_blow_all_tables

    g = Guest(machine, name="blow")
    sd = g.dom.paging
    g.touch(ARENA_GFN, 700, write=True)
    acc_before = machine.access.accessed.copy()
    ptes_before = arena_ptes(g, ARENA_GFN, ARENA_GFN + 800)
    assert sd.free_pages < sd.total_pages - 4
    lines = []
    shadow_blow_all_tables(machine, lines.append, ())
    assert lines == ["'S' pressed -> blowing all shadow tables"]
    # Only the top-level shadow in the vCPU's CR3 remains (empty), as in Xen.
    assert sd.free_pages == sd.total_pages - 1
    assert list(sd.pool.type.values()) == [SH_type_l4_64_shadow]
    assert not g.ram.u64[sd.toplevel[0] << 9 : (sd.toplevel[0] + 1) << 9].any()
    assert list(sd.shadow_flags) == [g.mfn(PT_GFN)]
    assert_clean(machine)
    f0 = machine.perfc.total("shadow_fault")
    g.touch(ARENA_GFN, 700, write=True)
    # Re-faulted once per page (and code), but A/D were already set: present and writable.
    assert machine.perfc.total("shadow_fault") - f0 == 701
    assert np.array_equal(arena_ptes(g, ARENA_GFN, ARENA_GFN + 800), ptes_before)
    assert np.array_equal(machine.access.accessed, acc_before)
    assert sl1e(g, ARENA_GFN + 3) & RW
    assert_clean(machine)


def test_perf_counter_keys(machine):
    from keyhandlers.perfc import perfc_printall, perfc_reset

    g = Guest(machine, name="pc")
    g.touch(ARENA_GFN, 10)
    lines: list[str] = []
    perfc_printall(machine, lines.append, ())
    assert lines[0].startswith("Xen performance counters SHOW  (now = ")
    row = next(x for x in lines if x.startswith("calls to shadow_fault "))
    total = machine.perfc.total("calls to shadow_fault")
    assert row.startswith(f"{'calls to shadow_fault':<32s}  TOTAL[{total:12d}]  CPU00[")
    assert row.endswith(f"  CPU01[{0:10d}]")
    in_use = machine.perfc.total("number of shadow pages in use")
    lines = []
    perfc_reset(machine, lines.append, ())
    assert lines[0].startswith("Xen performance counters RESET (now = ")
    assert machine.perfc.total("calls to shadow_fault") == 0
    assert machine.perfc.total("number of shadow pages in use") == in_use  # a status counter
    lines = []
    perfc_printall(machine, lines.append, ())
    assert f"{'calls to shadow_fault':<32s}  TOTAL[{0:12d}]" in lines
