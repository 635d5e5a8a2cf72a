"""Shadow paging faults on real Unicorn (tests/shadow_harness.py): the guest's A/D bits,
shadows that appear on access and become writable on dirtying, reflected guest faults and
crashes on bad frames, superpage (fl1) shadows and their fault tail, stale-TLB faults."""

from __future__ import annotations

import numpy as np
import pytest
from shadow_harness import (
    ARENA_GFN,
    CODE_GFN,
    NX,
    PT_GFN,
    RW,
    A,
    D,
    Guest,
    P,
    arena_ptes,
    assert_clean,
    sl1e,
)

# The harness builds its own guest tables on a machine that is not booted.
pytestmark = [pytest.mark.timeout(60), pytest.mark.machine(memory=1 << 30, boot=False, shared=True)]


@pytest.mark.parametrize("n,stride,write", [(300, 1, False), (200, 3, True), (64, 7, False)])
def test_touch_sets_exactly_the_guest_a_and_d_bits(machine, n, stride, write):
    g = Guest(machine, name=f"ad{n}")
    pc = machine.perfc
    f0 = pc.total("shadow_fault")
    g.touch(ARENA_GFN, n, stride, write=write)
    last = ARENA_GFN + n * stride + 10
    ptes = arena_ptes(g, ARENA_GFN, last)
    touched = np.zeros(last - ARENA_GFN, bool)
    touched[np.arange(n) * stride] = True
    a = (ptes & np.uint64(A)) != 0
    d = (ptes & np.uint64(D)) != 0
    assert np.array_equal(a, touched)
    assert np.array_equal(d, touched if write else np.zeros_like(touched))
    # Every level used got A (and D only in leaves), the code page A without D.
    assert all(e & A and not e & D for e in g.upper())
    assert g.pte(CODE_GFN) & (A | D) == A
    # One fault per touched page plus the code fetch (and the stack is never used).
    assert pc.total("shadow_fault") - f0 == n + 1
    # The access record: exactly the touched frames (and the code frame).
    acc = machine.access
    mfns = np.array([g.mfn(x) for x in range(ARENA_GFN, last)])
    assert np.array_equal(acc.accessed[mfns] == 1, touched)
    assert np.array_equal(acc.written[mfns] == 1, touched if write else ~touched & False)
    assert acc.accessed[g.mfn(CODE_GFN)] == 1 and acc.written[g.mfn(CODE_GFN)] == 0
    ft = acc.first_touch_ns[mfns[touched]]
    assert (ft > 0).all() and (np.diff(ft.astype(np.int64)) >= 0).all()
    assert acc.accessed[g.mfn(PT_GFN)] == 0  # the hypervisor's walks are not guest accesses
    assert_clean(machine)


def test_shadow_present_after_a_and_writable_after_d(machine):
    g = Guest(machine, name="prop")
    x = ARENA_GFN + 5
    assert sl1e(g, x) == 0
    g.touch(x, 1)
    s = sl1e(g, x)
    assert s & P and not s & RW and (s >> 12) & 0xFFFFFFFFFF == g.mfn(x)
    assert s & 4  # _PAGE_USER forced on
    assert s & NX  # data page: NX (Unicorn re-walks every store to executable pages)
    assert not sl1e(g, CODE_GFN) & NX
    f0 = machine.perfc.total("shadow_fault")
    g.touch(x, 1, write=True)  # the first write faults again, then D is set
    assert machine.perfc.total("shadow_fault") - f0 == 1
    assert g.pte(x) & (A | D) == A | D
    assert sl1e(g, x) & RW
    f1 = machine.perfc.total("shadow_fault")
    g.touch(x, 1, write=True)  # now nothing faults
    assert machine.perfc.total("shadow_fault") == f1
    assert_clean(machine)


def test_guest_faults_are_reflected_and_bad_gfns_crash(machine):
    g = Guest(machine, name="gf")
    sd = g.dom.paging
    v = g.vcpus[0]
    x = ARENA_GFN + 1
    l1 = g.q(g.l1_gfns[x >> 9])
    l1[x & 511] = 0  # not present
    g.load("mov al, byte ptr [rsi]")
    v.uc.reg_write(__import__("unicorn").x86_const.UC_X86_REG_RSI, x << 12)
    v.run(CODE_GFN << 12, (CODE_GFN << 12) + 2)
    assert v.events[-1] == ("guest", x << 12, 0)
    l1[x & 511] = (x << 12) | P  # read-only for the guest: a write is the guest's fault
    entry, until = g.load(f"mov rsi, {x << 12:#x}\nmov byte ptr [rsi], 1")
    v.run(entry, until)
    assert v.events[-1] == ("guest", x << 12, 3)  # P|W, no U (a PV kernel's own fault)
    assert g.pte(x) & (A | D) == 0  # a failed walk sets nothing
    assert machine.perfc.total("shadow_fault really guest fault") >= 2
    l1[x & 511] = (0xFFFFF << 12) | P | RW  # beyond the domain's memory
    entry, until = g.load(f"mov rsi, {x << 12:#x}\nmov al, byte ptr [rsi]")
    v.run(entry, until)
    assert v.events[-1][0] == "crash" and "BAD gfn=0xfffff" in sd.crash_reason
    l3 = g.q(PT_GFN + 1)
    l3[3] = (0x200 << 12) | P | RW | 0x80  # 1 GiB page: not offered under shadow paging
    entry, until = g.load(f"mov rsi, {3 << 30:#x}\nmov al, byte ptr [rsi]")
    v.run(entry, until)
    assert v.events[-1] == ("guest", 3 << 30, 0x9)  # P|RSVD
    assert_clean(machine)


def test_guest_superpages_get_fl1_shadows(machine):
    g = Guest(machine, name="fl1")
    sd = g.dom.paging
    v = g.vcpus[0]
    l2 = g.q(PT_GFN + 2)
    l2[7] = (0x400 << 12) | P | RW | 0x80  # VA 0xe00000 -> gfns 0x400-0x5ff, 2 MiB
    g.ram.write(g.mfn(0x405) << 12, b"superpg!")
    entry, until = g.load(
        f"mov rsi, {(7 << 21) + 0x5000:#x}\nmov rax, qword ptr [rsi]\n"
        f"mov rdi, {(7 << 21) + 0x9000:#x}\nmov qword ptr [rdi], rax"
    )
    assert v.run(entry, until) == until, v.events
    from unicorn.x86_const import UC_X86_REG_RAX

    assert v.uc.reg_read(UC_X86_REG_RAX).to_bytes(8, "little") == b"superpg!"
    assert g.ram.read(g.mfn(0x409) << 12, 8) == b"superpg!"
    assert int(l2[7]) & (A | D) == A | D  # the guest sees A/D on its 2 MiB entry
    fl1 = sd.hash.map[(0x400, 8)]  # SH_type_fl1_64_shadow, keyed by the gfn
    assert machine.frames.v[fl1] == 0x400 and fl1 in sd.shadow_l1_mfns()
    acc = machine.access
    assert acc.accessed[g.mfn(0x405)] and acc.written[g.mfn(0x409)]
    assert not acc.accessed[g.mfn(0x406)]  # exact per 4 KiB frame
    assert_clean(machine)
    # The guest turns the superpage off: the fl1 goes, the next access walks 4 KiB again.
    entry, until = g.load(
        f"mov rdi, {((PT_GFN + 2) << 12) + 7 * 8:#x}\n"
        f"mov rax, {((g.l1_gfns[7]) << 12) | P | RW:#x}\nmov qword ptr [rdi], rax\n"
        f"mov rsi, {(7 << 21) + 0x5000:#x}\nmov rax, qword ptr [rsi]"
    )
    assert v.run(entry, until) == until, v.events
    assert (0x400, 8) not in sd.hash.map
    assert g.pte((7 << 9) + 5) & A
    assert_clean(machine)


def test_stale_tlb_faults_do_not_add_up_to_a_crash(machine):
    """A fault the shadow already allows (a stale TLB) flushes and resumes; only a run of
    them with no progress in between would crash the domain."""
    g = Guest(machine, name="spur")
    sd, v = g.dom.paging, g.vcpus[0]
    for i in range(200):
        va = (ARENA_GFN + i) << 12
        assert sd.page_fault(v, va, 0) == 0  # fixed
        assert sd.page_fault(v, va, 0) == 0  # nothing to fix: flush, resume
    assert machine.perfc.total("shadow_fault fixed fault") >= 400
    assert_clean(machine)


def test_superpage_faults_end_like_4k_faults(machine):
    """The fault tail is one helper for 4 KiB and 2 MiB guest mappings (emu/shadow/multi.py
    `_sh_propagate`): a spurious fault through a superpage flushes the TLB, and an
    emulated page-table write through one restarts the no-progress count, as on 4 KiB."""
    g = Guest(machine, name="sp-tail")
    sd, v = g.dom.paging, g.vcpus[0]
    l2 = g.q(PT_GFN + 2)
    l2[7] = (0 << 12) | P | RW | 0x80  # VA 0xe00000 -> gfns 0x000-0x1ff, 2 MiB
    l1_va = (7 << 21) + (g.l1_gfns[0] << 12)  # the guest's first L1 table, via the superpage
    entry, until = g.load(
        f"mov rdi, {l1_va:#x}\nmov rax, qword ptr [rdi]\nmov qword ptr [rdi], rax"
    )
    assert v.run(entry, until) == until, v.events  # read, then an emulated PT write
    emulated = machine.perfc.total("shadow_fault_emulate_write")
    assert emulated >= 1
    # A fault the shadow already allows: flushed, one no-progress fault so far.
    # (Xen has no counter for this flush: xen/arch/x86/include/asm/perfc_defn.h lists none.)
    flushes = v.tlb_flushes
    assert sd.page_fault(v, l1_va, 0) == 0
    assert v.tlb_flushes == flushes + 1
    assert sd.spurious[0] == 1
    # The same code again: only the PT write faults (emulated), and that is progress.
    assert v.run(entry, until) == until, v.events
    assert machine.perfc.total("shadow_fault_emulate_write") == emulated + 1
    assert sd.spurious.get(0, 0) == 0
    assert_clean(machine)
