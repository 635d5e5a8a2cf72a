"""Shadow paging fault path on real Unicorn (tests/shadow_harness.py): A/D, propagation,
page-table write emulation, invlpg, blow tables, frame-table encoding, keys S and p/P."""

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
    new_machine,
)

from emu.audit import audit
from emu.mm.page_info import PGC_shadowed_pt
from emu.shadow.audit import audit_shadows
from emu.shadow.hash import sh_hash
from emu.shadow.multi import shadow_l1e_index
from emu.shadow.private import (
    SH_type_l1_64_shadow,
    SH_type_l2_64_shadow,
    SH_type_l3_64_shadow,
    SH_type_l4_64_shadow,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def machine():
    return new_machine(memory_mb=1024)


def _clean(m) -> None:
    assert audit(m) == []
    assert audit_shadows(m) == []


def _sl1e(g: Guest, gfn: int, vcpu: int = 0) -> int:
    i = shadow_l1e_index(g.dom.paging, vcpu, gfn << 12)
    return 0 if i is None else int(g.ram.u64[i])


def _arena_ptes(g: Guest, first: int, last: int) -> np.ndarray:
    return np.array([g.pte(x) for x in range(first, last)], dtype=np.uint64)


@pytest.mark.parametrize("n,stride,write", [(300, 1, False), (200, 3, True), (64, 7, False)])
def test_touch_sets_exactly_the_guest_a_and_d_bits(machine, n, stride, write):
    g = Guest(machine, name=f"ad{n}")
    pc = machine.perfc
    f0 = pc.total("shadow_fault")
    g.touch(ARENA_GFN, n, stride, write=write)
    last = ARENA_GFN + n * stride + 10
    ptes = _arena_ptes(g, ARENA_GFN, last)
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
    _clean(machine)


def test_shadow_present_after_a_and_writable_after_d(machine):
    g = Guest(machine, name="prop")
    x = ARENA_GFN + 5
    assert _sl1e(g, x) == 0
    g.touch(x, 1)
    s = _sl1e(g, x)
    assert s & P and not s & RW and (s >> 12) & 0xFFFFFFFFFF == g.mfn(x)
    assert s & 4  # _PAGE_USER forced on
    assert s & NX  # data page: NX (Unicorn re-walks every store to executable pages)
    assert not _sl1e(g, CODE_GFN) & NX
    f0 = machine.perfc.total("shadow_fault")
    g.touch(x, 1, write=True)  # the first write faults again, then D is set
    assert machine.perfc.total("shadow_fault") - f0 == 1
    assert g.pte(x) & (A | D) == A | D
    assert _sl1e(g, x) & RW
    f1 = machine.perfc.total("shadow_fault")
    g.touch(x, 1, write=True)  # now nothing faults
    assert machine.perfc.total("shadow_fault") == f1
    _clean(machine)


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
    _clean(machine)


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
    _clean(machine)
    # The guest turns the superpage off: the fl1 goes, the next access walks 4 KiB again.
    entry, until = g.load(
        f"mov rdi, {((PT_GFN + 2) << 12) + 7 * 8:#x}\n"
        f"mov rax, {((g.l1_gfns[7]) << 12) | P | RW:#x}\nmov qword ptr [rdi], rax\n"
        f"mov rsi, {(7 << 21) + 0x5000:#x}\nmov rax, qword ptr [rsi]"
    )
    assert v.run(entry, until) == until, v.events
    assert (0x400, 8) not in sd.hash.map
    assert g.pte((7 << 9) + 5) & A
    _clean(machine)


@pytest.mark.parametrize(
    "store,how",
    [
        ("mov qword ptr [rdi], rbx", "emulated"),
        ("mov qword ptr [rdi + 8*rcx], rbx", "emulated"),
        ("mov dword ptr [rdi], ebx", "emulated"),
        ("xchg qword ptr [rdi], rbx", "emulated"),
        ("xchg ebx, dword ptr [rdi]", "emulated"),
        ("mov rax, qword ptr [rdi]\nlock cmpxchg qword ptr [rdi], rbx", "emulated"),
        (
            "mov rax, 0x1234\nlock cmpxchg qword ptr [rdi], rbx\nmov rax, qword ptr [rdi]\n"
            "lock cmpxchg qword ptr [rdi], rbx",
            "emulated",
        ),  # fails (rax := old), then succeeds
        ("add qword ptr [rdi], r8", "single-stepped"),
        ("mov word ptr [rdi], bx\nmov word ptr [rdi + 2], 0x22", "single-stepped"),
    ],
)
def test_guest_page_table_writes_are_emulated_and_shadows_follow(machine, store, how):
    g = Guest(machine, name=f"ptw{machine.next_domid}")
    sd = g.dom.paging
    x, y = ARENA_GFN + 2, ARENA_GFN + 300
    g.ram.write(g.mfn(x) << 12, b"XXXXXXXX")
    g.ram.write(g.mfn(y) << 12, b"YYYYYYYY")
    l1gfn = g.l1_gfns[x >> 9]
    pte_va = (l1gfn << 12) + (x & 511) * 8
    e0 = machine.perfc.total("shadow_fault emulates a write")
    # Read x, remap x's PTE to y (a write into a shadowed L1), read x again.
    entry, until = g.load(
        f"""
        mov rsi, {x << 12:#x}
        mov rdi, {pte_va:#x}
        xor ecx, ecx
        mov r9, qword ptr [rsi]
        mov r8, {(y - x) << 12:#x}
        mov rbx, {(y << 12) | P | RW:#x}
        {store}
        mov rdx, qword ptr [rsi]
        """
    )
    v = g.vcpus[0]
    assert v.run(entry, until) == until, v.events
    from unicorn.x86_const import UC_X86_REG_R9, UC_X86_REG_RDX

    assert v.uc.reg_read(UC_X86_REG_R9).to_bytes(8, "little") == b"XXXXXXXX"
    assert v.uc.reg_read(UC_X86_REG_RDX).to_bytes(8, "little") == b"YYYYYYYY"
    n = 2 if "word ptr [rdi + 2]" in store or store.count("cmpxchg") == 2 else 1
    assert machine.perfc.total("shadow_fault emulates a write") - e0 == n
    assert sd.pt_writes[how] == n and sum(sd.pt_writes.values()) == n
    assert g.pte(x) == (y << 12) | P | RW | A  # the walker set A again on the new mapping
    assert (_sl1e(g, x) >> 12) & 0xFFFFFFFFFF == g.mfn(y)
    # The page table itself stays read-only in every shadow, and was recorded as written.
    assert not _sl1e(g, l1gfn) & RW
    assert machine.access.written[g.mfn(l1gfn)] == 1
    assert sd.shadow_flags[g.mfn(l1gfn)] & (1 << SH_type_l1_64_shadow)
    assert not sd.steps and not sd.stepping
    # The guest clears A in its own PTE: the shadow entry goes, the next access re-faults.
    entry, until = g.load(
        f"""
        mov rsi, {x << 12:#x}
        mov rdi, {pte_va:#x}
        mov rbx, {(y << 12) | P | RW:#x}
        mov qword ptr [rdi], rbx
        mov rdx, qword ptr [rsi]
        """
    )
    f0 = machine.perfc.total("shadow_fault")
    assert v.run(entry, until) == until, v.events
    assert machine.perfc.total("shadow_fault") - f0 == 2  # the PT write, the re-fault
    assert g.pte(x) & A
    _clean(machine)


def test_invlpg_drops_the_entry(machine):
    g = Guest(machine, name="inv")
    x = ARENA_GFN + 9
    g.touch(x, 1)
    assert _sl1e(g, x) & P
    fl0 = g.vcpus[0].tlb_flushes
    g.dom.paging.invlpg(g.vcpus[0], x << 12)
    assert _sl1e(g, x) == 0 and g.vcpus[0].tlb_flushes == fl0 + 1
    f0 = machine.perfc.total("shadow_fault")
    g.touch(x, 1)
    assert machine.perfc.total("shadow_fault") - f0 == 1
    _clean(machine)


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
    _clean(machine)


def test_blow_tables_returns_every_shadow_and_guests_refault(machine):
    from keyhandlers.shadow import shadow_blow_all_tables

    g = Guest(machine, name="blow")
    sd = g.dom.paging
    g.touch(ARENA_GFN, 700, write=True)
    acc_before = machine.access.accessed.copy()
    ptes_before = _arena_ptes(g, ARENA_GFN, ARENA_GFN + 800)
    assert sd.free_pages < sd.total_pages - 4
    lines = []
    shadow_blow_all_tables(machine, lines.append, ())
    assert lines == ["'S' pressed -> blowing all shadow tables"]
    # Only the top-level shadow in the vCPU's CR3 remains (empty), as in Xen.
    assert sd.free_pages == sd.total_pages - 1
    assert list(sd.pool.type.values()) == [SH_type_l4_64_shadow]
    assert not g.ram.u64[sd.toplevel[0] << 9 : (sd.toplevel[0] + 1) << 9].any()
    assert list(sd.shadow_flags) == [g.mfn(PT_GFN)]
    _clean(machine)
    f0 = machine.perfc.total("shadow_fault")
    g.touch(ARENA_GFN, 700, write=True)
    # Re-faulted once per page (and code), but A/D were already set: present and writable.
    assert machine.perfc.total("shadow_fault") - f0 == 701
    assert np.array_equal(_arena_ptes(g, ARENA_GFN, ARENA_GFN + 800), ptes_before)
    assert np.array_equal(machine.access.accessed, acc_before)
    assert _sl1e(g, ARENA_GFN + 3) & RW
    _clean(machine)


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


@pytest.mark.timeout(120)
def test_fuzz_guest_rewrites_its_own_tables_and_the_audit_stays_clean():
    """Seeded fuzz: a guest writes random entries (valid, holes, beyond memory, superpage,
    recursive, NX, read-only) into its own L1-L4 tables and touches random addresses, with
    blow/invlpg/window resets in between. Every fault is FIXED, reflected or a crash;
    nothing raises, and the machine and shadow audits stay clean after every program."""
    rng = np.random.default_rng(20261126)
    m = new_machine()
    g = Guest(m, mem_mb=8, pool_pages=48)
    sd = g.dom.paging
    v = g.vcpus[0]
    nr = g.nr_pages
    pt_gfns = [PT_GFN, PT_GFN + 1, PT_GFN + 2, *g.l1_gfns]
    outcomes: dict[str, int] = {}

    def random_entry() -> int:
        kind = rng.integers(0, 8)
        if kind == 0:
            return 0
        if kind == 1:  # beyond the domain's memory
            return (int(rng.integers(nr, 1 << 20)) << 12) | P | RW
        if kind == 2:  # one of its own page tables (recursive / aliasing)
            return (int(rng.choice(pt_gfns)) << 12) | P | RW | int(rng.integers(0, 2)) * A
        flags = P | int(rng.integers(0, 2)) * RW | int(rng.integers(0, 2)) * (A | D)
        flags |= int(rng.integers(0, 4) == 0) * NX | int(rng.integers(0, 6) == 0) * 0x80
        return (int(rng.integers(ARENA_GFN, nr)) << 12) | flags

    def random_va() -> int:
        r = rng.integers(0, 4)
        if r == 0:
            return int(rng.integers(1, 512)) << 39 | int(rng.integers(0, 1 << 27)) << 12
        if r == 1:
            return int(rng.integers(1, 512)) << 30 | int(rng.integers(0, 1 << 18)) << 12
        return int(rng.integers(ARENA_GFN, nr)) << 12 | int(rng.integers(0, 4096 - 8))

    for prog in range(150):
        lines = []
        for _ in range(6):
            if rng.integers(0, 2):
                # an entry outside the chain that maps the code (L4/L3/L2 slot 0, L1 #0)
                t = int(rng.integers(0, 4))
                gfn = [PT_GFN, PT_GFN + 1, PT_GFN + 2, int(rng.choice(g.l1_gfns[1:]))][t]
                idx = int(rng.integers(1 if t < 3 else 0, 512))
                lines += [f"mov rdi, {(gfn << 12) + idx * 8:#x}", f"mov rax, {random_entry():#x}",
                          "mov qword ptr [rdi], rax"]  # fmt: skip
            else:
                w = rng.integers(0, 2)
                op = "mov qword ptr [rsi], rax" if w else "mov rax, qword ptr [rsi]"
                lines += [f"mov rsi, {random_va():#x}", op]
        entry, until = g.load("\n".join(lines))
        n_ev = len(v.events)
        v.run(entry, until)
        kind = v.events[-1][0] if len(v.events) > n_ev else "ran"
        outcomes[kind] = outcomes.get(kind, 0) + 1
        if kind == "crash":
            sd.crash_reason = None
        if prog % 10 == 3:
            sd.blow_tables()
        if prog % 10 == 6:
            m.access.reset_window(g.dom)
        if prog % 10 == 8:
            sd.invlpg(v, random_va())
        assert not sd.steps and not sd.stepping
        assert audit(m) == [], (prog, lines)
        assert audit_shadows(m) == [], (prog, lines)
    assert outcomes.get("ran", 0) > 10 and outcomes.get("guest", 0) > 10, outcomes
    assert outcomes.get("crash", 0) >= 1, outcomes
    assert m.perfc.total("shadow_fault emulates a write") > 100


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
    _clean(machine)


def test_a_step_interrupted_before_its_write_is_taken_back_by_another_vcpu():
    """vCPU 0 faults on a PT write that must be single-stepped, but is descheduled before the
    instruction runs; vCPU 1 then faults: the lent entry is write-protected again, and
    vCPU 0's write, when it resumes, faults and is stepped again."""
    from unicorn.x86_const import UC_X86_REG_EFLAGS, UC_X86_REG_RIP, UC_X86_REG_RSP

    m = new_machine()
    g = Guest(m, mem_mb=8, nr_vcpus=2)
    sd = g.dom.paging
    v0, v1 = g.vcpus
    x, y = ARENA_GFN + 2, ARENA_GFN + 7
    l1gfn = g.l1_gfns[0]
    pte_va = (l1gfn << 12) + x * 8
    entry, until = g.load(
        f"mov rdi, {pte_va:#x}\nmov rbx, {(y - x) << 12:#x}\nadd qword ptr [rdi], rbx\nnop"
    )
    # Run vCPU 0 up to the xchg's fault by hand: call the fault path as its hook would.
    v0.uc.reg_write(UC_X86_REG_RSP, 0x31000)
    v0.uc.emu_start(entry, entry + 17)  # the two movs only (10 + 7 bytes)
    assert sd.page_fault(v0, pte_va, 0x2) == 0  # a write to a not-present page
    assert sd.steps and v0.uc.reg_read(UC_X86_REG_EFLAGS) & 0x100
    i1 = shadow_l1e_index(sd, 0, pte_va)
    assert int(g.ram.u64[i1]) & RW  # lent for one instruction
    # vCPU 1 runs and faults: the entry is taken back.
    e1, u1 = g.load(f"mov rsi, {(ARENA_GFN + 100) << 12:#x}\nmov al, byte ptr [rsi]", CODE_GFN + 1)
    assert v1.run(e1, u1) == u1
    assert not sd.steps and not int(g.ram.u64[i1]) & RW
    # vCPU 0 resumes at the add: it faults again, is stepped, the shadow follows.
    v0.uc.emu_start(v0.uc.reg_read(UC_X86_REG_RIP), until)
    assert v0.uc.reg_read(UC_X86_REG_RIP) == until, v0.events
    assert not sd.steps and not sd.stepping
    assert g.pte(x) & ~(A | D) == (y << 12) | P | RW
    assert sd.pt_writes["single-stepped"] == 2
    _clean(m)


def test_cmpxchg_flags_match_the_cpu():
    """The emulator's `cmp` flags (for cmpxchg) against Unicorn executing `cmp` itself."""
    from shadow_harness import asm
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
    from unicorn.x86_const import UC_X86_REG_EFLAGS, UC_X86_REG_RAX, UC_X86_REG_RBX

    from emu.shadow.emulate import _ARITH_FLAGS, _cmp_flags

    rng = np.random.default_rng(5)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    for size, src in ((8, "cmp rax, rbx"), (4, "cmp eax, ebx")):
        code = asm(src, 0x1000)
        uc.mem_write(0x1000, code)
        vals = [0, 1, 0x7F, 0x80, (1 << 31), (1 << 32) - 1, (1 << 63), (1 << 64) - 1]
        vals += [int(x) for x in rng.integers(0, 1 << 63, 40, dtype=np.int64)]
        for a in vals:
            for b in vals[::3]:
                mask = (1 << (8 * size)) - 1
                uc.reg_write(UC_X86_REG_RAX, a)
                uc.reg_write(UC_X86_REG_RBX, b)
                uc.emu_start(0x1000, 0x1000 + len(code))
                want = uc.reg_read(UC_X86_REG_EFLAGS) & _ARITH_FLAGS
                assert _cmp_flags(a & mask, b & mask, size) == want, (size, hex(a), hex(b))


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
    # A fault the shadow already allows: flushed, one no-progress fault so far. (Xen has no
    # counter for this flush: xen/arch/x86/include/asm/perfc_defn.h lists none.)
    flushes = v.tlb_flushes
    assert sd.page_fault(v, l1_va, 0) == 0
    assert v.tlb_flushes == flushes + 1
    assert sd.spurious[0] == 1
    # The same code again: only the PT write faults (emulated), and that is progress.
    assert v.run(entry, until) == until, v.events
    assert machine.perfc.total("shadow_fault_emulate_write") == emulated + 1
    assert sd.spurious.get(0, 0) == 0
    _clean(machine)
