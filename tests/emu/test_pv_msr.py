"""`rdmsr`/`wrmsr` from a 64-bit PV guest kernel (emu/pv/msr.py): small asm PV kernels run
in-process. Xen's rules: read_msr()/write_msr() in xen/arch/x86/pv/emul-priv-op.c (4.22),
guest_rdmsr()/guest_wrmsr() in xen/arch/x86/msr.c; the lines are gdprintk() of a debug build
("%s:%d:%pv ", xen/include/xen/lib.h:106-108) and gprintk() ("%pv ", lib.h:89-90)."""

from __future__ import annotations

import pytest
from pv_helpers import run_to_end, small_machine

from emu.host import DomainSpec

HC = 0x101000  # the test kernels' hypercall page (emu/pv/elf.py write_pv_elf)
SHUTDOWN = (
    "sub rsp, 16\nmov dword ptr [rsp], ebx\nmov rdi, 2\nmov rsi, rsp\n"
    f"mov rax, {HC + 32 * 29}\ncall rax\n"
)
# The #GP handler: note the fault in r13, skip the 2-byte rdmsr/wrmsr, return to the kernel
# with its rcx/r11 and stack (the PV frame: rcx r11 ec rip cs rflags rsp ss, traps.c bounce).
GP_HANDLER = """
gp:
    mov r13d, 1
    mov rcx, [rsp]
    mov r11, [rsp + 8]
    mov r12, [rsp + 24]
    add r12, 2
    mov rsp, [rsp + 48]
    jmp r12
"""
SET_TRAPS = f"lea rdi, [rip + traps]\nmov rax, {HC}\ncall rax\n"  # set_trap_table (nr 0)
TRAPS = "traps:\n.byte 13, 0\n.word 0xe033\n.long 0\n.quad gp\n.quad 0, 0\n"


def pv_kernel(source: str) -> bytes:
    from emu.asm import assemble
    from emu.pv.elf import write_pv_elf

    return write_pv_elf(assemble(source, 0x100000, 1 << 20))


class Probes:
    """Checks run by the guest: any mismatch loads its number in rbx and crashes (ud2)."""

    def __init__(self) -> None:
        self.src: list[str] = []

    def _expect(self, fault: bool, val: int | None) -> None:
        n = len(self.src) + 1
        s = f"cmp r13d, {int(fault)}\njne fail\n"
        if val is not None:
            s += f"shl rdx, 32\nmov eax, eax\nor rax, rdx\nmov r14, {val}\ncmp rax, r14\njne fail\n"
        self.src.append(f"mov ebx, {n}\n" + self._body + s)

    def rd(self, msr: int, val: int | None = None, fault: bool = False) -> None:
        self._body = f"xor r13d, r13d\nmov ecx, {msr}\nrdmsr\n"
        self._expect(fault, None if fault else val)

    def wr(self, msr: int, val: int, fault: bool = False) -> None:
        self._body = (
            f"xor r13d, r13d\nmov ecx, {msr}\nmov eax, {val & 0xFFFFFFFF}\nmov edx, {val >> 32}\n"
            "wrmsr\n"
        )
        self._expect(fault, None)

    def raw(self, src: str) -> None:
        self.src.append(f"mov ebx, {len(self.src) + 1}\n" + src)

    def kernel(self) -> bytes:
        body = "".join(self.src)
        return pv_kernel(
            "mov r15, rsi\n"
            + SET_TRAPS
            + body
            + "xor ebx, ebx\n"
            + SHUTDOWN
            + "fail:\nud2\n"
            + GP_HANDLER
            + TRAPS
        )


def _run(tmp_path, m, name: str, image: bytes):
    path = tmp_path / name
    path.write_bytes(image)
    return run_to_end(m, DomainSpec(name=name, memory=64, type="pv", kernel=str(path)))


@pytest.mark.timeout(300)
def test_rdmsr_wrmsr_follow_xens_rules(tmp_path):
    p = Probes()
    p.rd(0xC0000080, 0xD01)  # EFER: guest_efer() (emul-priv-op.c:943-945, 863-878), REAL_EFER
    p.wr(0xC0000080, 0xD01)  # writing back the current value is allowed (emul-priv-op.c:1088-1095)
    p.wr(0xC0000080, 0x501, fault=True)  # any change: break, #GP, no line
    p.rd(0x277, 0x0000050100070406)  # XEN_MSR_PAT (emul-priv-op.c:947-949, processor.h:69-76)
    p.rd(0x1B, 0xFEE00900)  # APIC_BASE: ENABLE | 0xfee00000 | BSP for vCPU 0 (:913-918)
    p.wr(0xC0000100, 0x12345000)  # FS_BASE, canonical (emul-priv-op.c:1063-1073)
    p.rd(0xC0000100, 0x12345000)  # (:920-924)
    p.wr(0xC0000100, 0x0000800000000000, fault=True)  # non-canonical: break, no line
    p.wr(0xC0000101, 0xFFFF800000001000)  # GS_BASE (:1078-1083)
    p.rd(0xC0000101, 0xFFFF800000001000)  # (:926-931)
    p.wr(0xC0000102, 0x5000)  # SHADOW_GS_BASE: gs_base_user (:1075-1077)
    p.rd(0xC0000102, 0x5000)  # (:933-937)
    p.rd(0xC0010015, 0)  # K8_HWCR reads 0 on AMD (msr.c:314-318)
    p.wr(0xC0010015, 0x1234)  # dropped: not a cpufreq controller (emul-priv-op.c:1097-1117)
    p.rd(0xC0011029, 2)  # DE_CFG: LFENCE_SERIALISE (msr.c:338-342)
    p.wr(0xC0011029, 0)  # writes dropped (msr.c:659-666)
    p.rd(0xC0010064, 0)  # K8_PSTATE0 reads 0 on AMD (emul-priv-op.c:951-969)
    p.rd(0xC001001F, 0)  # NB_CFG: not a pinned hardware domain (:976-980)
    p.rd(0xC0010000, 0)  # K7_EVNTSEL0 with vPMU off (:1001-1008, cpu/vpmu.c:115-118)
    p.wr(0xC0010004, 5)  # K7_PERFCTR0 write dropped (:1183-1195)
    p.rd(0x40000000, 0)  # the hypercall-page MSR reads as zero (msr.c:45-59)
    p.rd(0x40000001, fault=True)  # guest_rdmsr_xen()'s other indices: #GP
    p.wr(0x40000000, 0x123, fault=True)  # a page index: msr.c:77-83
    p.wr(0x40000001, 0, fault=True)  # guest_wrmsr_xen()'s other indices (msr.c:110-111)
    # The hypercall page written again into its own frame (msr.c:85-107): byte 0 restored.
    # Its frame: start_info.mfn_list[pfn 0x101] (this kernel's virt_base is 0).
    p.raw(
        "mov byte ptr [0x101000], 0x90\nmov r8, [r15 + 104]\nmov rax, [r8 + 0x101 * 8]\n"
        "shl rax, 12\nmov rdx, rax\nshr rdx, 32\nmov ecx, 0x40000000\nxor r13d, r13d\n"
        "wrmsr\ncmp r13d, 0\njne fail\ncmp byte ptr [0x101000], 0x51\njne fail\n"
    )
    p.rd(0x179, 2)  # MCG_CAP: AMD_GUEST_MCG_CAP, 2 banks (vmce.c:41, 51, 189-192)
    p.rd(0x17B, 0)  # MCG_CTL: no MCG_CTL_P (vmce.c:194-198)
    p.rd(0x400, (1 << 64) - 1)  # MC0_CTL: all ones (vmce.c:101-106)
    p.wr(0x401, 0)  # MC0_STATUS: 0 may be written (vmce.c:248-255)
    p.wr(0x401, 1, fault=True)  # anything else: -1, #GP (msr.c:538-544)
    p.rd(0x4D0, fault=True)  # MCG_EXT_CTL without LMCE (vmce.c:200-216)
    p.rd(0x410, 0)  # MC4_CTL: not a guest bank, "not handled": reads 0 (msr.c:216-224)
    p.rd(0x10)  # TSC: no fault (emul-priv-op.c:939-941)
    p.raw(  # ... and not 0: the CPU's TSC
        "xor r13d, r13d\nmov ecx, 0x10\nrdmsr\nshl rdx, 32\nmov eax, eax\nor rax, rdx\n"
        "test rax, rax\njz fail\n"
    )
    p.rd(0xCE, 0)  # PLATFORM_INFO: no CPUID faulting on this host (msr.c:202-204)
    p.wr(0x140, 0)  # MISC_FEATURES_ENABLES: 0 only (msr.c:519-536)
    p.wr(0x140, 1, fault=True)
    p.rd(0x140, 0)
    p.wr(0xC0000103, 7)  # TSC_AUX (CPUID 0x80000001 EDX.RDTSCP) (msr.c:624-633)
    p.rd(0xC0000103, 7)  # (msr.c:287-292)
    p.wr(0xC0000103, 1 << 32, fault=True)  # not a 32-bit value
    p.rd(0x48, fault=True)  # SPEC_CTRL without IBRS in CPUID (msr.c:197-200)
    p.rd(0x3A, fault=True)  # FEATURE_CONTROL is not AMD's (msr.c:151-162)
    p.rd(0x1A0, fault=True)  # MISC_ENABLE: rdmsr_safe() fails on AMD (emul-priv-op.c:982-986)
    p.rd(0x1D9, fault=True)  # DEBUGCTL: no case: RDMSR ... unimplemented (:1011-1020, :1038)
    p.wr(0x1D9, 1, fault=True)  # WRMSR ... unimplemented (:1197-1205)
    p.rd(0xC1, fault=True)  # P6_PERFCTR0 on AMD: check_relaxed (:993-999)
    m, out = small_machine()
    try:
        d = _run(tmp_path, m, "msr", p.kernel())
        text = "".join(out).replace("\r\n", "\n")
        assert d.shutdown_code == "-", text  # poweroff: every probe held
        lines = [ln for ln in text.split("\n") if "msr" in ln.lower()]
        assert lines == [
            "(XEN) arch/x86/msr.c:79:d1v0 wrmsr hypercall page index 0x123 unsupported",
            "(XEN) arch/x86/pv/emul-priv-op.c:1038:d1v0 RDMSR 0x000001d9 unimplemented",
            "(XEN) arch/x86/pv/emul-priv-op.c:1202:d1v0 WRMSR 0x000001d9 val "
            "0x0000000000000001 unimplemented",
            "(XEN) arch/x86/pv/emul-priv-op.c:1038:d1v0 RDMSR 0x000000c1 unimplemented",
        ], text
    finally:
        m.shutdown()


@pytest.mark.timeout(300)
def test_rdmsr_without_a_gp_handler_is_faked_or_crashes(tmp_path):
    """No #GP handler: a refused read of an MSR the host has is faked as 0 with gprintk's
    line (emul-priv-op.c:1028-1036); one the host lacks (MISC_ENABLE on AMD) is a #GP the
    guest cannot take: "Unhandled" and the domain crashes (traps.c pv_inject_event)."""
    src = (
        "mov eax, 5\nmov edx, 5\nmov ecx, 0x1d9\nrdmsr\nor eax, edx\nmov ebx, 3\n"
        "test eax, eax\njnz bad\nmov ecx, 0x1a0\nrdmsr\nxor ebx, ebx\n" + SHUTDOWN + "bad:\nud2\n"
    )
    m, out = small_machine()
    try:
        d = _run(tmp_path, m, "fake", pv_kernel(src))
        text = "".join(out).replace("\r\n", "\n")
        assert d.shutdown_code == "c", text
        assert "(XEN) d1v0 faking RDMSR 0x000001d9\n(XEN) d1v0 Unhandled: vec 13, #GP[0000]\n" in (
            text
        ), text
        assert "unimplemented" not in text
    finally:
        m.shutdown()


@pytest.mark.timeout(900)
def test_xtf_msr_and_debug_regs():
    """XTF's msr test lists what a PV guest reads (its rdmsr_safe() over 0-0x1fff,
    0x40000000-0x400000ff, 0xc0000000-0xc0001fff), each refused default read with Xen's
    line; debug-regs' plain rdmsr of MSR_DEBUGCTL is that line then XTF's panic."""
    from pv_helpers import kernel, serial_lines, xtf_tree

    xtf = xtf_tree()
    m, out = small_machine()
    try:
        run_to_end(m, DomainSpec(name="msr", memory=128, type="pv", kernel=kernel(xtf, "msr")), 600)
        lines = serial_lines(out)
        guest = [ln[5:] for ln in lines if ln.startswith("(d1) ")]
        for want in (
            "  0000001b -> 00000000fee00900",  # APIC_BASE (emul-priv-op.c:913-918)
            "  00000179 -> 0000000000000002",  # MCG_CAP (vmce.c:41, 189-192)
            "  00000277 -> 0000050100070406",  # XEN_MSR_PAT
            "  40000000 -> 0000000000000000",  # msr.c:45-59
            "  c0000080 -> 0000000000000d01",  # guest_efer()
        ):
            assert want in guest
        assert "  000001d9 -> 0000000000000000" not in guest
        assert "(XEN) arch/x86/pv/emul-priv-op.c:1038:d1v0 RDMSR 0x000001d9 unimplemented" in lines
        assert "(XEN) arch/x86/pv/emul-priv-op.c:1038:d1v0 RDMSR 0x000001a0 unimplemented" not in (
            lines
        )  # MISC_ENABLE: break before `warn` on AMD (emul-priv-op.c:982-986)
        assert guest[-1] == "Test result: SUCCESS"
        out.clear()
        d = run_to_end(
            m, DomainSpec(name="dr", memory=128, type="pv", kernel=kernel(xtf, "debug-regs"))
        )
        lines = serial_lines(out)
        i = lines.index("(d2) Test initial debug state")
        assert (
            lines[i + 1]
            == "(XEN) arch/x86/pv/emul-priv-op.c:1038:d2v0 RDMSR 0x000001d9 unimplemented"
        )
        assert lines[i + 2] == "(d2) ******************************"
        assert lines[i + 3].startswith("(d2) PANIC: Unhandled exception at e030:")
        assert d.shutdown_code == "c"
    finally:
        m.shutdown()
