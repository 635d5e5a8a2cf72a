"""`rdmsr`/`wrmsr` of a 64-bit PV guest kernel: read_msr()/write_msr() of
xen/arch/x86/pv/emul-priv-op.c (lines 893-1215) after guest_rdmsr()/guest_wrmsr() of
xen/arch/x86/msr.c (lines 117-415, 417-705), for a domU on this host (emu/boot.py: an AMD
CPU) with Xen's defaults: msr_relaxed off, vPMU off, no cpufreq controller, no
dom0_vcpus_pin. The CPUID features the rules test are the guest's own (emu/pv/priv_op.py
guest_cpuid), as Xen's cpu_policy is what the guest's CPUID shows.

A refused access raises #GP(0) (the caller reflects it), with Xen's gdprintk line where
Xen has one. The machine-check MSRs are the vMCE's (xen/arch/x86/cpu/mcheck/vmce.c).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X

OK, EXCEPTION, UNHANDLEABLE = "ok", "exception", "unhandleable"

MSR_APIC_BASE, MSR_IA32_TSC, MSR_EFER, MSR_IA32_CR_PAT = 0x1B, 0x10, 0xC0000080, 0x277
MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE, MSR_TSC_AUX = (
    0xC0000100,
    0xC0000101,
    0xC0000102,
    0xC0000103,
)
MSR_IA32_MISC_ENABLE, MSR_INTEL_PLATFORM_INFO, MSR_INTEL_MISC_FEATURES_ENABLES = 0x1A0, 0xCE, 0x140
MSR_K8_HWCR, MSR_AMD64_DE_CFG, MSR_AMD64_NB_CFG = 0xC0010015, 0xC0011029, 0xC001001F
MSR_FAM10H_MMIO_CONF_BASE, MSR_AMD_PATCHLEVEL = 0xC0010058, 0x8B
MSR_IA32_DEBUGCTLMSR = 0x1D9  # no case anywhere: the default path (#GP + line)

# msr-index.h; guest_rdmsr()'s "write-only" and "not offered to guests" cases (msr.c:127-150).
_NOT_OFFERED = frozenset(
    [0x33, 0x10F, 0x122, 0x123, *range(0x560, 0x590), 0x6A0, 0x6A2, *range(0x6A4, 0x6A9),
     0xC0000105, 0xC0000106, 0x4E, 0x4F, 0xC00102F0, 0xC00102F1]
)  # fmt: skip
_RD_WRITE_ONLY = frozenset([0xC0010020, 0x79, 0x49, 0x10B, 0xCF])
_WR_READ_ONLY = frozenset([0x17, 0xCF, 0x35, 0xCE, 0x10A])  # msr.c:429-434
_MCE = frozenset([0, 1, *range(0x179, 0x17C), *range(0x280, 0x2A0), *range(0x400, 0x480), 0x4D0])
_K8_HWDOM = frozenset([0xC0010010, 0xC001001A, 0xC001001D, *range(0xC0010016, 0xC001001A),
                       0xC0010112, 0xC0010113])  # fmt: skip
_DR_MASKS = frozenset([0xC0011027, 0xC0011019, 0xC001101A, 0xC001101B])
_AMD_PSTATE = frozenset([0xC0010041, 0xC0010042, *range(0xC0010061, 0xC001006C)])
_AMD_PMU = frozenset([*range(0xC0010200, 0xC001020C), *range(0xC0010000, 0xC0010008)])

APIC_BASE_BSP, APIC_BASE_ENABLE, APIC_DEFAULT_PHYS_BASE = 1 << 8, 1 << 11, 0xFEE00000
# XEN_MSR_PAT (asm/processor.h:69-76): WB WT UC- UC WC WP UC UC
XEN_MSR_PAT = 0x0000050100070406
AMD64_DE_CFG_LFENCE_SERIALISE = 1 << 1
EFER_SVME, EFER_AIBRSE = 1 << 12, 1 << 21

# The MSRs this AMD host's rdmsr_safe() succeeds on (architectural MSRs an AMD64 CPU has, and
# the K7/K8/family-10h+ ones Xen itself uses on AMD); IA32_MISC_ENABLE is Intel-only.
_HOST_MSRS = frozenset(
    [0x10, 0x1B, 0x8B, 0xFE, 0x174, 0x175, 0x176, 0x179, 0x17A, 0x17B, 0x1D9, 0x1DB, 0x1DC,
     0x1DD, 0x1DE, *range(0x200, 0x210), 0x250, 0x258, 0x259, *range(0x268, 0x270), 0x277,
     0x2FF, *range(0x400, 0x418), 0xE7, 0xE8, 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083,
     0xC0000084, 0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103, *_AMD_PMU, *_K8_HWDOM,
     0xC0010015, 0xC001001F, *_AMD_PSTATE, 0xC0010114, 0xC0010117, 0xC0011029]
)  # fmt: skip


def host_rdmsr_ok(msr: int) -> bool:
    """rdmsr_safe() on this host succeeds."""
    return msr in _HOST_MSRS


_tsc_lock = threading.Lock()
_tsc_uc: Uc | None = None


def host_rdtsc() -> int:
    """rdtsc() on this host: the TSC every vCPU's own `rdtsc` reads (Unicorn gives the
    host's; its MSR 0x10 reads 0, so a scratch Uc runs the instruction)."""
    global _tsc_uc
    with _tsc_lock:
        if _tsc_uc is None:
            _tsc_uc = Uc(UC_ARCH_X86, UC_MODE_64)
            _tsc_uc.mem_map(0x1000, 0x1000, UC_PROT_ALL)
            _tsc_uc.mem_write(0x1000, b"\x0f\x31")
        _tsc_uc.emu_start(0x1000, 0x1002)
        eax, edx = _tsc_uc.reg_read(X.UC_X86_REG_RAX), _tsc_uc.reg_read(X.UC_X86_REG_RDX)
        return (edx & 0xFFFFFFFF) << 32 | eax & 0xFFFFFFFF


def _state(vcpu) -> dict[int, int]:
    """The vCPU's struct vcpu_msrs: the MSR values guest_wrmsr() keeps."""
    st = getattr(vcpu, "msr_state", None)
    if st is None:
        st = vcpu.msr_state = {}
    return st


def _canonical(v: int) -> bool:
    return (v >> 47) in (0, 0x1FFFF)


Cpuid = Callable[[object, int, int], tuple[int, int, int, int]]  # emu/pv/priv_op.py guest_cpuid


class _Policy:
    """The cpu_policy bits the rules test, from the guest's CPUID."""

    def __init__(self, vcpu, guest_cpuid: Cpuid) -> None:
        _, b7, c7, d7 = guest_cpuid(vcpu, 7, 0)
        _, _, c81, d81 = guest_cpuid(vcpu, 0x80000001, 0)
        _, b88, _, _ = guest_cpuid(vcpu, 0x80000008, 0)
        xsaves = guest_cpuid(vcpu, 0xD, 1)[0] >> 3 & 1
        self.lm = bool(d81 >> 29 & 1)
        self.ibrsb, self.ibrs, self.ibpb = (
            bool(d7 >> 26 & 1),
            bool(b88 >> 14 & 1),
            bool(b88 >> 12 & 1),
        )
        self.arch_caps, self.l1d_flush = bool(d7 >> 29 & 1), bool(d7 >> 28 & 1)
        self.pks, self.mpx, self.xsaves = bool(c7 >> 31 & 1), bool(b7 >> 14 & 1), bool(xsaves)
        self.rdtscp, self.rdpid = bool(d81 >> 27 & 1), bool(c7 >> 22 & 1)
        self.virt_ssbd, self.dbext = bool(b88 >> 25 & 1), bool(c81 >> 26 & 1)
        # platform_info.cpuid_faulting = cpu_has_cpuid_faulting (cpu-policy.c:404): none here
        self.platform_info = 0


def guest_efer() -> int:
    """guest_efer() (emul-priv-op.c:863-878): the host EFER without SVME and AIBRSE."""
    from emu.cpu.vcpu import REAL_EFER

    return REAL_EFER & ~(EFER_SVME | EFER_AIBRSE)


def guest_rdmsr(vcpu, msr: int, cp: _Policy) -> tuple[str, int]:
    """guest_rdmsr() (msr.c:117-415) for a PV domU on an AMD host."""
    st = _state(vcpu)
    if msr in _RD_WRITE_ONLY or msr in _NOT_OFFERED:
        return EXCEPTION, 0
    if msr in (0x3A, 0x17):  # FEATURE_CONTROL, PLATFORM_ID: not AMD's (msr.c:151-176)
        return EXCEPTION, 0
    if msr == MSR_AMD_PATCHLEVEL:  # msr.c:178-195: the host's microcode level
        return (OK, 0) if host_rdmsr_ok(msr) else (EXCEPTION, 0)
    if msr == 0x48:  # SPEC_CTRL
        return (OK, st.get(msr, 0)) if cp.ibrsb or cp.ibrs else (EXCEPTION, 0)
    if msr == MSR_INTEL_PLATFORM_INFO:
        return OK, cp.platform_info
    if msr == 0x10A:
        return EXCEPTION, 0  # ARCH_CAPABILITIES needs cp->feat.arch_caps
    if msr == MSR_INTEL_MISC_FEATURES_ENABLES:
        return OK, st.get(msr, 0)
    if msr in _MCE:
        val = vmce_rdmsr(vcpu, msr)
        return (EXCEPTION, 0) if val is None else (OK, val)
    if msr in (0x198, 0x199, 0x19C):  # PERF_STATUS/PERF_CTL/THERM_STATUS: Intel/Centaur only
        return EXCEPTION, 0
    if msr == 0x6E1 and cp.pks or msr == 0xD90 and cp.mpx:
        return OK, st.get(msr, 0)
    if msr in (0x6E1, 0xD90) or 0x800 <= msr <= 0x8FF:  # no PKS/MPX; x2APIC is HVM's
        return EXCEPTION, 0
    if msr == 0xDA0:
        return (OK, 0) if cp.xsaves else (EXCEPTION, 0)
    if 0x40000000 <= msr <= 0x400002FF:  # guest_rdmsr_xen() (msr.c:45-59)
        return (OK, 0) if msr == 0x40000000 else (EXCEPTION, 0)
    if msr == MSR_TSC_AUX:
        return (OK, st.get(msr, 0)) if cp.rdtscp or cp.rdpid else (EXCEPTION, 0)
    if msr in _K8_HWDOM:
        return UNHANDLEABLE, 0  # not the hardware domain (msr.c:305-306)
    if msr == MSR_K8_HWCR:
        return OK, 0
    if msr == MSR_FAM10H_MMIO_CONF_BASE:
        return EXCEPTION, 0  # not the hardware domain (msr.c:321-324)
    if msr == 0xC001011F:
        return (OK, st.get(msr, 0)) if cp.virt_ssbd else (EXCEPTION, 0)
    if msr == MSR_AMD64_DE_CFG:
        return OK, AMD64_DE_CFG_LFENCE_SERIALISE
    if msr in _DR_MASKS:
        return (OK, st.get(msr, 0)) if cp.dbext else (EXCEPTION, 0)
    return UNHANDLEABLE, 0


def read_msr(vcpu, msr: int, cpuid: Cpuid) -> tuple[str, int, bool]:
    """read_msr() (emul-priv-op.c:893-1041) up to its `done:` label: (ret, value, warn)."""
    cp = _Policy(vcpu, cpuid)
    ret, val = guest_rdmsr(vcpu, msr, cp)
    if ret != UNHANDLEABLE:
        return ret, val, False
    if msr == MSR_APIC_BASE:
        return (
            OK,
            APIC_BASE_ENABLE | APIC_DEFAULT_PHYS_BASE | (0 if vcpu.vcpu_id else APIC_BASE_BSP),
            False,
        )
    if msr in (MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE) and cp.lm:
        if msr == MSR_SHADOW_GS_BASE:
            return OK, vcpu.gs_base_user, False
        reg = X.UC_X86_REG_FS_BASE if msr == MSR_FS_BASE else X.UC_X86_REG_GS_BASE
        return OK, vcpu.rr(reg), False
    if msr == MSR_IA32_TSC:  # vtsc off: the CPU's TSC, as the guest's own rdtsc reads it
        return OK, host_rdtsc(), False
    if msr == MSR_EFER:
        return OK, guest_efer(), False
    if msr == MSR_IA32_CR_PAT:
        return OK, XEN_MSR_PAT, False
    if msr in _AMD_PSTATE or msr == MSR_AMD64_NB_CFG:
        return OK, 0, False
    if msr == MSR_IA32_MISC_ENABLE:  # rdmsr_safe() fails on AMD: break, no line
        return UNHANDLEABLE, 0, False
    if msr == 0x345:  # PERF_CAPABILITIES
        return OK, 0, False
    if msr in _AMD_PMU:  # vpmu_do_rdmsr() with vPMU off reads 0 (cpu/vpmu.c:115-118)
        return OK, 0, False
    # default, and Intel's P6/Core PMU MSRs on AMD (check_relaxed): msr_relaxed is off
    return UNHANDLEABLE, 0, True


def rdmsr(vcpu, cpuid: Cpuid) -> bool:
    """Emulate `rdmsr`; False: #GP(0) to the guest."""
    msr = vcpu.rr(X.UC_X86_REG_RCX) & 0xFFFFFFFF
    ret, val, warn = read_msr(vcpu, msr, cpuid)
    ti = vcpu.trap_ctxt.get(13)
    if ret != OK and not (ti and ti[2]) and msr >> 16 != 0x4000 and host_rdmsr_ok(msr):
        _printk(vcpu, f"{vcpu.name} faking RDMSR {msr:#010x}")  # emul-priv-op.c:1028-1036
        ret, val = OK, 0
    elif warn:
        _gdprintk(vcpu, 1038, f"RDMSR {msr:#010x} unimplemented")
    if ret != OK:
        return False
    vcpu.rw(X.UC_X86_REG_RAX, val & 0xFFFFFFFF)
    vcpu.rw(X.UC_X86_REG_RDX, val >> 32)
    return True


def wrmsr_hypercall_page(vcpu, val: int) -> str:
    """guest_wrmsr_xen() index 0 (msr.c:61-108): the hypercall page written into the frame
    `val` names; a PV guest's gfn is its mfn (get_page_from_gfn, not translated)."""
    from emu.pv.build import hypercall_page
    from emu.pv.mm import PGT_writable_page

    m, dom = vcpu.machine, vcpu.domain
    mfn, index = val >> 12, val & 0xFFF
    if index:
        _gdprintk(vcpu, 79, f"wrmsr hypercall page index {index:#x} unsupported", "msr.c")
        return EXCEPTION
    pvmm = m.pv.mm
    got = mfn < m.ram.nr_frames and pvmm.get_page(mfn, dom)
    if not got or pvmm.get_page_type(mfn, PGT_writable_page, dom):
        if got:
            pvmm.put_page(mfn)
        shown = mfn if got else (1 << 64) - 1  # INVALID_MFN when there is no page
        _gdprintk(vcpu, 98, f"Bad GMFN {mfn:x} (MFN {shown:#05x}) to MSR 40000000", "msr.c")
        return EXCEPTION
    m.ram.write(mfn << 12, hypercall_page())
    pvmm.put_page_and_type(mfn, dom)
    return OK


def guest_wrmsr(vcpu, msr: int, val: int, cp: _Policy) -> str | None:
    """guest_wrmsr() (msr.c:417-705) for a PV domU on an AMD host."""
    st = _state(vcpu)
    if msr in _WR_READ_ONLY or msr in _NOT_OFFERED:
        return EXCEPTION
    if msr in (MSR_AMD_PATCHLEVEL, 0xC0010020, 0x79):  # PATCHLEVEL: Intel's; loaders: not PV
        return EXCEPTION
    if msr == 0x48:  # SPEC_CTRL: IBRS|STIBP only (msr_spec_ctrl_valid_bits() without SSBD...)
        if not (cp.ibrsb or cp.ibrs) or val & ~3:
            return EXCEPTION
        st[msr] = val
        return OK
    if msr == 0x49 and not (cp.ibrsb or cp.ibpb) or msr == 0x10B and not cp.l1d_flush:
        return EXCEPTION
    if msr == 0x49:
        return EXCEPTION if val & ~1 else OK
    if msr == MSR_INTEL_MISC_FEATURES_ENABLES:  # msr.c:519-536
        if val & ~(1 if cp.platform_info & (1 << 31) else 0):
            return EXCEPTION
        st[msr] = val
        return OK
    if msr in _MCE:
        return OK if vmce_wrmsr(vcpu, msr, val) else EXCEPTION
    if msr == 0x199 or msr in (0x6E1, 0xD90, 0xDA0) or 0x800 <= msr <= 0x8FF:
        return EXCEPTION  # Intel's PERF_CTL; no PKS/MPX/XSAVES; x2APIC is HVM's
    if msr == 0x40000000:
        return wrmsr_hypercall_page(vcpu, val)
    if 0x40000000 < msr <= 0x400002FF:
        return EXCEPTION  # guest_wrmsr_xen()'s other indices (msr.c:61-112)
    if msr == MSR_TSC_AUX:
        if not (cp.rdtscp or cp.rdpid) or val >> 32:
            return EXCEPTION
        st[msr] = val
        return OK
    if msr == 0xC001011F or msr in _DR_MASKS and (not cp.dbext or val >> 32):
        return EXCEPTION
    if msr in _DR_MASKS:
        st[msr] = val
        return OK
    if msr == MSR_AMD64_DE_CFG:
        return OK  # writes dropped (msr.c:659-666)
    return UNHANDLEABLE


def wrmsr(vcpu, cpuid: Cpuid) -> bool:
    """Emulate `wrmsr`: write_msr() (emul-priv-op.c:1043-1215); False: #GP(0) to the guest."""
    msr = vcpu.rr(X.UC_X86_REG_RCX) & 0xFFFFFFFF
    val = (vcpu.rr(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | vcpu.rr(X.UC_X86_REG_RAX) & 0xFFFFFFFF
    cp = _Policy(vcpu, cpuid)
    ret = guest_wrmsr(vcpu, msr, val, cp)
    if ret != UNHANDLEABLE:
        return ret == OK
    if msr in (MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE):
        if not cp.lm or not _canonical(val):
            return False
        if msr == MSR_FS_BASE:
            vcpu.rw(X.UC_X86_REG_FS_BASE, val)
        elif msr == MSR_GS_BASE:
            vcpu.rw(X.UC_X86_REG_GS_BASE, val)
        else:  # the user GS base, loaded by the next switch to guest user mode
            vcpu.gs_base_user = val
        return True
    if msr == MSR_EFER:  # only the current value may be written back
        return val == guest_efer()
    if msr in _AMD_PSTATE or msr in (MSR_K8_HWCR, MSR_AMD64_NB_CFG, 0xE7, 0xE8):
        return True  # not a cpufreq controller, not a pinned hardware domain: dropped
    if msr in _AMD_PMU:
        return True  # vpmu_do_wrmsr() with vPMU off (cpu/vpmu.c:115-118)
    if msr in (MSR_FAM10H_MMIO_CONF_BASE, MSR_IA32_MISC_ENABLE, 0x19A, 0x1B0):
        return False  # family < 0x10 / no MISC_ENABLE on AMD / Intel-only: break, no line
    _gdprintk(vcpu, 1202, f"WRMSR {msr:#010x} val {val:#018x} unimplemented")
    return False


# ---- vMCE (cpu/mcheck/vmce.c) for an AMD host: MCG_CAP = AMD_GUEST_MCG_CAP = 2 banks -------

MSR_IA32_MCG_CAP, MSR_IA32_MCG_STATUS, MSR_IA32_MCG_CTL, MSR_IA32_MCG_EXT_CTL = (
    0x179,
    0x17A,
    0x17B,
    0x4D0,
)
MSR_IA32_MC0_CTL, GUEST_MC_BANK_NUM = 0x400, 2  # asm/mce.h:14
AMD_GUEST_MCG_CAP = GUEST_MC_BANK_NUM  # vmce.c:41; no MCG_CTL_P, no MCG_LMCE_P


def vmce_rdmsr(vcpu, msr: int) -> int | None:
    """vmce_rdmsr() (vmce.c:171-227) and bank_mce_rdmsr() (vmce.c:92-164); None: #GP.
    Its mce_printk() lines need mce_verbosity=verbose: none here."""
    st = _state(vcpu)
    if msr == MSR_IA32_MCG_STATUS:
        return st.get(msr, 0)
    if msr == MSR_IA32_MCG_CAP:
        return AMD_GUEST_MCG_CAP
    if msr == MSR_IA32_MCG_CTL:
        return 0  # ~0 only with MCG_CTL_P
    if msr == MSR_IA32_MCG_EXT_CTL:
        return None  # no LMCE
    if MSR_IA32_MC0_CTL <= msr < MSR_IA32_MC0_CTL + 4 * GUEST_MC_BANK_NUM:  # mce_bank_msr()
        return (1 << 64) - 1 if msr & 3 == 0 else st.get(msr, 0)  # MCi_CTL: all ones
    return 0  # not a bank MSR: "not handled", guest_rdmsr() reads 0 (msr.c:216-224)


def vmce_wrmsr(vcpu, msr: int, val: int) -> bool:
    """vmce_wrmsr() (vmce.c:306-349) and bank_mce_wrmsr() (vmce.c:234-299); False: #GP."""
    if msr == MSR_IA32_MCG_STATUS:
        _state(vcpu)[msr] = val
        return True
    if msr == MSR_IA32_MCG_EXT_CTL:
        return False
    if MSR_IA32_MC0_CTL <= msr < MSR_IA32_MC0_CTL + 4 * GUEST_MC_BANK_NUM and msr & 3:
        if val:  # MCi_STATUS/ADDR/MISC: only 0 may be written
            return False
        _state(vcpu)[msr] = 0
    return True  # MCG_CTL, MCG_CAP, MCi_CTL: ignored; others "not handled" (msr.c:538-544)


def _gdprintk(vcpu, line: int, text: str, file: str = "pv/emul-priv-op.c") -> None:
    """A debug build's gdprintk() (xen/include/xen/lib.h:106-108) from arch/x86/`file`."""
    _printk(vcpu, f"arch/x86/{file}:{line}:{vcpu.name} {text}")


def _printk(vcpu, text: str) -> None:
    """At XENLOG_G_WARNING, as every line here (the guest_loglvl thresholds apply)."""
    from emu.console import XENLOG_WARNING

    vcpu.machine.console.printk(text + "\n", level=XENLOG_WARNING, guest=True)
