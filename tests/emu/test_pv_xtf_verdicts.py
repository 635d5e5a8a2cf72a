"""PV behaviour behind four XTF verdicts: FSGSBASE instructions (pv-fsgsbase), debug
registers and compat-mode syscalls (xsa-260), the FIFO event channel ABI (xsa-188), and the
#GP Xen 4.22 gives a PV guest reading MSR_DEBUGCTL (debug-regs). Xen's rules are cited per
test; every test needs ../shared/xtf and skips with one reason without it."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pv_helpers import kernel, run_to_end, serial_lines, small_machine, xtf_tree

from emu.audit import audit
from emu.host import DomainSpec


@pytest.fixture
def xtf() -> Path:
    """XTF built once per process (skips without ../shared/xtf)."""
    return xtf_tree()


def _run(m, out, xtf: Path, name: str) -> list[str]:
    out.clear()
    d = run_to_end(m, DomainSpec(name=name, memory=128, type="pv", kernel=kernel(xtf, name)))
    return [
        ln[len(f"(d{d.domid}) ") :] for ln in serial_lines(out) if ln.startswith(f"(d{d.domid}) ")
    ]


@pytest.mark.timeout(600)
def test_fsgsbase_xsa260_xsa188_livepatch_verdicts(xtf):
    """pv-fsgsbase: WRFSBASE of a non-canonical value is #GP(0) once the guest set
    CR4.FSGSBASE (pv/domain.c:227-228 hands that bit to the real CR4; the CPU checks).
    xsa-260: a data breakpoint on `mov ss` is a #DB after the next instruction, a hit whose
    delivery point is in Xen is dropped (traps.c:2100-2174), and the compat-mode syscall
    reaches the guest's syscall32 callback. xsa-188: EVTCHNOP_init_control with a bad frame
    is -EINVAL (event_fifo.c:423-429, 631-648) and leaves no FIFO state, so expand_array is
    -EOPNOTSUPP (event_fifo.c:692-703)."""
    m, out = small_machine()
    try:
        free = m.free_pages()
        assert _run(m, out, xtf, "pv-fsgsbase")[2:] == [
            "Test PV FSGSBASE behaviour",
            "Test result: SUCCESS",
        ]
        assert _run(m, out, xtf, "xsa-260")[2:] == [
            "XSA-260 PoC",
            "Testing native syscall",
            "  Entered XTF via syscall",
            "Testing compat syscall",
            "  Entered XTF via syscall",
            "Success: Not vulnerable to XSA-260",
            "Test result: SUCCESS",
        ]
        assert _run(m, out, xtf, "xsa-188")[2:] == ["XSA-188 PoC", "Test result: SUCCESS"]
        # xsa-182: a read-only recursive L4 entry is a linear self-map (mm.c:668-738); made
        # writable it is refused with the line of define_get_linear_pagetable(l4).
        assert _run(m, out, xtf, "xsa-182")[2:] == [
            "XSA-182 PoC",
            "  Creating recursive l4 mapping",
            "  Remapping l4 RW",
            "  Attempt to create writeable linear map was blocked",
            "Not vulnerable to XSA-182",
            "Test result: SUCCESS",
        ]
        assert "(XEN) arch/x86/mm.c:1164:d4v0 Attempt to create linear p.t. with write perms" in (
            serial_lines(out)
        )
        # sysctl from a domU: version checked, then XSM_PRIV refuses (common/sysctl.c:42-47,
        # xsm/dummy.h:97-100); the version probe (XTF common/lib.c) finds 0x16.
        denied = "Xen correctly denied Live Patch calls"
        assert _run(m, out, xtf, "livepatch-priv-check")[2:] == [
            "Live Patch Privilege Check",
            f"test_upload: {denied}",
            f"test_list: {denied}",
            f"test_get: {denied}",
        ] + [f"test_action: {denied}"] * 4 + ["Test result: SUCCESS"]
        assert m.free_pages() == free and audit(m) == []
    finally:
        m.shutdown()


@pytest.mark.timeout(600)
def test_debug_regs_msr_debugctl_is_gp_as_in_xen(xtf):
    """debug-regs reads MSR_DEBUGCTL (0x1d9) with a plain rdmsr. Xen 4.22 has no PV case for
    it: guest_rdmsr() (arch/x86/msr.c) has none, read_msr() (pv/emul-priv-op.c:893-1041)
    goes to `default`, msr_relaxed is off, and the guest has a #GP handler, so no "faking
    RDMSR": the #GP reaches XTF, which panics. The domain crashes there on Xen too."""
    m, out = small_machine()
    try:
        lines = _run(m, out, xtf, "debug-regs")
        assert lines[2:4] == ["Debugging facility tests", "Test initial debug state"]
        assert lines[5].startswith("PANIC: Unhandled exception at e030:")
        assert lines[6] == "Vec 13 #GP[0000]"
        assert audit(m) == []
    finally:
        m.shutdown()


@pytest.mark.timeout(600)
def test_debug_register_rules(xtf):
    """set_debugreg() (pv/misc-hypercalls.c:57-157) and x86emul_read_dr()
    (x86_emulate/util-xen.c:163-201) on a built vCPU; the reserved bits per debug.c:54-88."""
    from emu.pv.priv_op import guest_cpuid

    m, _ = small_machine()
    try:
        d = m.create_domain(
            DomainSpec(name="dr", memory=128, type="pv", kernel=kernel(xtf, "example")),
            paused=True,
        )
        v = d.vcpus[0]
        dbg = v.debug
        rtm = bool(guest_cpuid(v, 7, 0)[1] & (1 << 11))
        assert dbg.get(6) == 0xFFFF0FF0 and dbg.get(7) == 0x400
        assert dbg.set(0, 0xFFFF800000000000) == -1  # Xen's range: -EPERM
        assert dbg.set(0, 0xFFFF880000000000) == 0 and dbg.get(0) == 0xFFFF880000000000
        assert dbg.set(6, 1 << 32) == -22  # upper half reserved: -EINVAL
        assert dbg.set(6, 0) == 0 and dbg.get(6) == 0xFFFF0FF0 & ~(0 if not rtm else 1 << 16)
        assert dbg.set(7, 0x2000 | 0x3) == -1  # GD: -EPERM
        io0 = 0x400 | 0x200 | 0x2 | (2 << 16) | (3 << 18)  # G0, R/W0 = I/O, LEN0 = 4
        assert dbg.set(7, io0) == -1  # I/O breakpoints need CR4.DE
        v.vcr4 |= 1 << 3
        assert dbg.set(7, io0) == 0
        assert (dbg.dr7, dbg.dr7_emul, dbg.get(7)) == (io0 & ~0x2, 0x2, io0)
        assert dbg.get(4) is None and dbg.set(5, 0) == -19  # CR4.DE: DR4/5 are #UD
        v.vcr4 &= ~(1 << 3)
        assert dbg.set(7, 0) == 0 and dbg.get(7) == 0x400 and dbg.dr7_emul == 0
        m.destroy_domain(d)
        assert audit(m) == []
    finally:
        m.shutdown()


@pytest.mark.timeout(600)
def test_fifo_event_channels(xtf):
    """The FIFO ABI on a built domain: init_control's checks (event_fifo.c:572-649),
    expand_array (651-703), set_pending linking ports into the vCPU's queue and setting
    READY (161-319), set_priority (event_channel.c:1337-1352, event_fifo.c:379-393), the
    pages held as writable until the domain goes (evtchn_fifo_destroy())."""
    from emu.pv import event_fifo as F
    from emu.pv.mm import PGT_count_mask, PGT_type_mask, PGT_writable_page

    m, _ = small_machine()
    try:
        free = m.free_pages()
        d = m.create_domain(
            DomainSpec(name="fifo", memory=128, type="pv", kernel=kernel(xtf, "example")),
            paused=True,
        )
        ev = d.pv.evtchn
        cb_mfn, arr_mfn = int(d.p2m[-1]), int(d.p2m[-2])
        assert F.expand_array(ev, arr_mfn) == -95  # no FIFO yet: -EOPNOTSUPP
        assert F.set_priority(ev, 1, 3) == -38  # 2-level: -ENOSYS
        assert F.init_control(ev, 1, cb_mfn, 0) == -2  # no vCPU 1: -ENOENT
        assert F.init_control(ev, 0, cb_mfn, 4096 - 71) == -22  # crosses the page
        assert F.init_control(ev, 0, cb_mfn, 4) == -22  # not 8-byte aligned
        assert F.init_control(ev, 0, (1 << 64) - 2, 0) == -22 and ev.fifo is None
        assert F.init_control(ev, 0, cb_mfn, 8) == 0
        assert F.init_control(ev, 0, cb_mfn, 8) == -22  # already mapped
        ti = int(m.frames.type_info[cb_mfn])
        assert (ti & PGT_type_mask, ti & PGT_count_mask) == (PGT_writable_page, 1)
        p1, p2 = ev.alloc_unbound(d.domid), ev.alloc_unbound(d.domid)
        ev.set_pending(p1)  # no event array page yet: kept for later
        assert F.expand_array(ev, arr_mfn) == 0
        mm = m.ram.mm
        word = lambda p: struct.unpack_from("<I", mm, (arr_mfn << 12) + 4 * p)[0]  # noqa: E731
        cb = (cb_mfn << 12) + 8
        assert word(p1) == F.PENDING | F.LINKED
        assert struct.unpack_from("<I", mm, cb + 8 + 4 * 7)[0] == p1  # head of queue 7
        assert struct.unpack_from("<I", mm, cb)[0] == 1 << 7  # READY
        assert m.ram.u8[d.pv.shared_info_mfn << 12] == 1  # evtchn_upcall_pending
        ev.set_pending(p2)
        assert word(p1) == F.PENDING | F.LINKED | p2 and word(p2) == F.PENDING | F.LINKED
        assert F.set_priority(ev, p2, 16) == -22 and F.set_priority(ev, p2, 0) == 0
        assert ev.pending(p2) and ev.unmask(p2) == 0 and ev.unmask(4000) == -22
        m.destroy_domain(d)
        assert m.free_pages() == free and audit(m) == []
    finally:
        m.shutdown()


@pytest.mark.timeout(600)
def test_linear_page_tables(xtf):
    """Linear page tables as Xen 4.22 builds them (CONFIG_PV_LINEAR_PT, pv-linear-pt on,
    mm.c:596-760): a read-only L4 entry may map another validated L4 of the domain (a general
    and a type reference, linear_pt_count +1 on the holder, -1 on the mapped table), but not
    chain; dropping the entry drops all of it (mm.c:1280-1313, 2864-2871)."""
    from emu.pv.mm import PGT_count_mask, PGT_l4_page_table

    m, out = small_machine()
    try:
        d = m.create_domain(
            DomainSpec(name="lin", memory=128, type="pv", kernel=kernel(xtf, "example")),
            paused=True,
        )
        pvmm = m.pv.mm
        l4 = d.vcpus[0].guest_table
        other = int(d.p2m[-1])
        m.ram.u64[other << 9 : (other + 1) << 9] = 0
        assert pvmm.get_page_and_type(other, PGT_l4_page_table, d) == 0
        count = lambda mfn: int(m.frames.type_info[mfn]) & PGT_count_mask  # noqa: E731
        base = count(other)
        assert pvmm.mod_entry(l4, 5, (other << 12) | 0x25, 4, d) == 0  # P|U|A, read-only
        assert (count(other), pvmm.linear) == (base + 1, {l4: 1, other: -1})
        out.clear()
        assert pvmm.mod_entry(other, 5, (l4 << 12) | 0x25, 4, d) == -22  # no chains
        assert pvmm.mod_entry(l4, 6, (other << 12) | 0x27, 4, d) == -22  # writable
        assert serial_lines(out)[:-1] == [
            "(XEN) arch/x86/mm.c:1164:d0v0 Attempt to create linear p.t. with write perms"
        ]
        assert pvmm.mod_entry(l4, 5, 0, 4, d) == 0
        assert (count(other), pvmm.linear) == (base, {})
        pvmm.put_page_and_type(other, d)
        assert audit(m) == []
        assert pvmm.get_page_and_type(other, PGT_l4_page_table, d) == 0
        assert pvmm.mod_entry(l4, 5, (other << 12) | 0x25, 4, d) == 0
        free = m.free_pages()
        m.destroy_domain(d)  # with the linear entry in place: the marks go with the domain
        assert pvmm.linear == {} and audit(m) == [] and m.free_pages() > free
    finally:
        m.shutdown()


@pytest.mark.timeout(600)
def test_instruction_breakpoint_is_a_fault_at_its_address(xtf):
    """An enabled instruction breakpoint (DR7 R/W 00) raises #DB before the instruction, with
    the frame's rip at it (SDM vol. 3 18.2.4); XTF's example has no #DB handler, so it
    panics with the exception's address and vector."""
    import subprocess
    import time

    exe = kernel(xtf, "example")
    syms = subprocess.run(["nm", exe], capture_output=True, text=True, check=True).stdout
    test_main = next(
        int(ln.split()[0], 16) for ln in syms.splitlines() if ln.endswith(" test_main")
    )
    m, out = small_machine()
    try:
        d = m.create_domain(DomainSpec(name="bp", memory=128, type="pv", kernel=exe), paused=True)
        dbg = d.vcpus[0].debug
        assert dbg.set(0, test_main) == 0 and dbg.set(7, 0x401) == 0  # L0, execute, 1 byte
        m.sched.unpause_domain(d)
        end = time.monotonic() + 60
        while d.domid in m.domains and time.monotonic() < end:
            time.sleep(0.02)
        lines = [ln[5:] for ln in serial_lines(out) if ln.startswith("(d1) ")]
        assert lines[2:7] == [
            "Hello World",  # the test's title, printed before test_main() runs
            "******************************",
            f"PANIC: Unhandled exception at e030:{test_main:016x}",
            "Vec 1 #DB",
            "******************************",
        ]
        assert audit(m) == []
    finally:
        m.shutdown()
