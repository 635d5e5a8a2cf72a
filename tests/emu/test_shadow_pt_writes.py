"""Guest page-table writes under shadow paging on real Unicorn (tests/shadow_harness.py):
emulated writes that shadows follow, a seeded fuzz of a guest rewriting its own tables with
the audits clean, a step interrupted before its write, cmpxchg flags as the CPU sets them."""

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
    assert_clean,
    new_machine,
    sl1e,
)

from emu.audit import audit
from emu.shadow.audit import audit_shadows
from emu.shadow.multi import shadow_l1e_index
from emu.shadow.private import (
    SH_type_l1_64_shadow,
)

# The harness builds its own guest tables on a machine that is not booted.
pytestmark = [pytest.mark.timeout(60), pytest.mark.machine(memory=1 << 30, boot=False, shared=True)]


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
    assert (sl1e(g, x) >> 12) & 0xFFFFFFFFFF == g.mfn(y)
    # The page table itself stays read-only in every shadow, and was recorded as written.
    assert not sl1e(g, l1gfn) & RW
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
    assert_clean(machine)


@pytest.mark.e2e  # a long whole-machine scenario: outside the fast part
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
    assert_clean(m)


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
