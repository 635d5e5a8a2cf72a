"""The keys on a 64-bit PV domain: `d` shows the PV guest's registers and stack as Xen's
show_execution_state() does, `q` shows PV state as dump_domains() does, `W` walks the guest's
own tables, `X` dumps its frames by pfn. Xen formats cited per test (RELEASE-4.22.0)."""

from __future__ import annotations

import pytest
from guest_helpers import new_machine, run_key, wait_for

from emu.asm import assemble
from emu.cpu.regdump import show_pv_guest_stack
from emu.host import DomainSpec
from emu.pv.elf import write_pv_elf
from keyhandlers import KEY_TABLE, KeyhandlerError

# rax/rbx known, two words pushed, then a spin at 0x100018 (7 + 7 + 5 + 5 bytes of code).
SPIN = "mov rax, 0x1234\nmov rbx, 0x5678\npush 0xabc\npush 0xdef\nspin: jmp spin\n"


@pytest.fixture(scope="module")
def pv(tmp_path_factory):
    m = new_machine(memory=512 << 20)
    path = tmp_path_factory.mktemp("pv") / "spin.elf"
    path.write_bytes(write_pv_elf(assemble(SPIN, 0x100000, 1 << 20)))
    dom = m.create_domain(DomainSpec(name="spin", memory=16, vcpus=2, type="pv", kernel=str(path)))
    v = dom.vcpus[0]
    assert wait_for(lambda: v.cpu_time_ns > 0 and v.reg("rip") == 0x100018)
    yield m, dom
    m.shutdown()


def key(m, k: str, *args: str) -> list[str]:
    return run_key(KEY_TABLE[k].fn, m, *args)


@pytest.mark.timeout(60)
def test_d_shows_the_pv_guest_registers_and_stack(pv):
    """keyhandler.c:155-156 (guest state header), traps.c:112-113 (print_xen_info),
    traps.c:188-226 (_show_registers; `EM: %d` for a PV vCPU at :203, CONTEXT at :204),
    traps.c:535 and :563-580 (show_guest_stack: debug_stack_lines=20 lines of 4 words)."""
    m, dom = pv
    v = dom.vcpus[0]
    for _ in range(50):  # the vCPU spins: it is current on a pCPU nearly always
        lines = key(m, "d")
        heads = [i for i, t in enumerate(lines) if t.endswith("guest state (d1v0): ***")]
        if heads:
            break
    assert heads, lines
    i = heads[0]
    cpu = int(lines[i].split("CPU")[1].split()[0])
    l4 = v.guest_table
    assert lines[i : i + 15] == [
        f"*** Dumping CPU{cpu} guest state (d1v0): ***",
        "----[ Xen-4.22.0  x86_64  debug=y  Not tainted ]----",
        f"CPU:    {cpu}",
        "RIP:    e033:[<0000000000100018>]",
        "RFLAGS: 0000000000000202   EM: 1   CONTEXT: pv guest (d1v0)",
        "rax: 0000000000001234   rbx: 0000000000005678   rcx: 0000000000000000",
        f"rdx: 0000000000000000   rsi: {lines[i + 6][29:45]}   rdi: 0000000000000000",
        f"rbp: 0000000000000000   rsp: {lines[i + 7][29:45]}   r8:  0000000000000000",
        "r9:  0000000000000000   r10: 0000000000000000   r11: 0000000000000000",
        "r12: 0000000000000000   r13: 0000000000000000   r14: 0000000000000000",
        "r15: 0000000000000000   cr0: 0000000080010033   cr4: 0000000000000620",
        f"cr3: {l4 << 12:016x}   cr2: 0000000000000000",
        "fsb: 0000000000000000   gsb: 0000000000000000   gss: 0000000000000000",
        "ds: 0000   es: 0000   fs: 0000   gs: 0000   ss: e02b   cs: e033",
        f"Guest stack trace from rsp={lines[i + 7][29:45]}:",
    ]
    assert lines[i + 15].startswith("   0000000000000def 0000000000000abc ")
    assert len(lines[i + 15]) == 2 + 4 * 17
    assert lines[i + 35] == ""  # 20 lines of words (debug_stack_lines), then the blank


@pytest.mark.timeout(60)
def test_guest_stack_ends_as_xen_says(pv):
    """traps.c:537-540 (access_ok fails: Guest-inaccessible memory), :568-575 (a fault
    while reading: Fault while accessing guest memory.), :565-566 (stop at a STACK_SIZE
    boundary, asm/config.h:41-42; `Stack empty.` at :585-586 when nothing was read)."""
    m, dom = pv
    v = dom.vcpus[0]
    out: list[str] = []
    with m.quiesce(dom):
        show_pv_guest_stack(m, out.append, v, 0xFFFF800000001000)
        show_pv_guest_stack(m, out.append, v, 0x7FFF1000)
        show_pv_guest_stack(m, out.append, v, 0x7FFF0000)  # at the boundary: nothing read
        show_pv_guest_stack(m, out.append, v, 0x117FF0)  # two words below 0x118000
    assert out == [
        "Guest stack trace from rsp=ffff800000001000:",
        "  Guest-inaccessible memory.",
        "Guest stack trace from rsp=000000007fff1000:",
        "  Fault while accessing guest memory.",
        "Guest stack trace from rsp=000000007fff0000:",
        "  Stack empty.",
        "Guest stack trace from rsp=0000000000117ff0:",
        "   0000000000000000 0000000000000000",
    ]


@pytest.mark.timeout(60)
def test_q_shows_pv_state(pv):
    """keyhandler.c:273-301 (no `paging assistance` for a PV domU: paging_dump_domain_info()
    prints only in a paging mode), x86/domain.c:242-243 (no PoD line for PV),
    keyhandler.c:334-349 (vCPU lines; upcall_mask 01 as vcpu_info_reset(), common/domain.c:2124,
    leaves it; the never-started vCPU1 has pause_flags VPF_down = 2), :364-366 (VIRQ_DEBUG
    unbound: port 0).
    Ours: no periodic timer runs for a PV vCPU here (docs/differences.md)."""
    m, dom = pv
    lines = key(m, "q")
    start = lines.index("General information for domain 1:")
    block = lines[start : lines.index("Notifying guest 0:0 (virq 1, port 7)")]
    assert block[3] == f"    handle={dom.handle} vm_assist=00000000"
    assert block[4] == "Rangesets belonging to domain 1:"
    assert not any("paging assistance" in t or "PoD" in t for t in block)
    v0 = next(i for i, t in enumerate(block) if t.startswith("    VCPU0: CPU"))
    assert block[v0].split("] ")[1].startswith("poll=0 upcall_pend=00 upcall_mask=01 ")
    assert block[v0 + 2] == "No periodic timer"
    assert block[v0 + 3 :] == [
        "  UNIT1 affinities: hard={0-1} soft={0-1}",
        f"    VCPU1: CPU{dom.vcpus[1].processor} [has=F] poll=0 upcall_pend=00 upcall_mask=01 ",
        "    pause_count=0 pause_flags=2",
        "No periodic timer",
    ]
    assert lines[-2:] == [
        "Notifying guest 1:0 (virq 1, port 0)",
        "Notifying guest 1:1 (virq 1, port 0)",
    ]


@pytest.mark.timeout(60)
def test_W_walks_the_pv_guest_own_tables(pv):
    """Our key `W` on a PV domain: the guest's validated tables with their page types
    (asm/mm.h PGT_*), Xen's slots 256 and 260 not followed, no shadow."""
    m, dom = pv
    v = dom.vcpus[0]
    l4 = v.guest_table
    lines = key(m, "W", "d1")
    assert lines[0] == "d1: pv guest, direct paging: the guest's own tables (no shadow)"
    assert lines[1] == (
        f"d1v0 kernel cr3: l4 mfn {l4:#x} (pfn {int(m.m2p[l4]):#x}: l4 page table, validated, "
        "pinned, count 2)"
    )
    xen = [t for t in lines if t.startswith(" l4[") and "Xen's own slot" in t]
    assert [t[:8] for t in xen] == [" l4[100]", " l4[104]"]
    assert lines[-1].startswith("d1: ") and lines[-1].endswith(" l1 table(s)")
    one = key(m, "W", "d1", "0x100000")
    assert one[0] == (
        f"d1v0 va 0x0000000000100000: cr3 mfn {l4:#x} (kernel mode), the guest's own tables "
        "(direct paging, no shadow)"
    )
    assert [t[:8] for t in one[2:6]] == ["l4  000 ", "l3  000 ", "l2  000 ", "l1  100 "]
    code = int(dom.p2m[0x100])
    assert one[6] == f"page    | mfn {code:#x} (pfn 0x100): writable page, validated, count 1"
    assert key(m, "W", "d1", "0xffff800000000000")[-1] == (
        "page    | Xen's own slot (the guest cannot reach it)"
    )


@pytest.mark.timeout(60)
def test_X_dumps_a_pv_guest_frame_by_pfn(pv):
    m, dom = pv
    lines = key(m, "X", "d1", "0x100")
    assert lines[0] == f"d1 pfn 0x100 -> mfn {int(dom.p2m[0x100]):#x}"
    assert lines[1].startswith("0000000000100000  48 c7 c0 34 12 00 00 48  c7 c3 78 56 00 00")
    with pytest.raises(KeyhandlerError, match=r"^d1 pfn 0x100000 is not populated$"):
        key(m, "X", "d1", "0x100000")
