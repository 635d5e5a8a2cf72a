"""Privileged instructions of a 64-bit PV guest kernel (pv/emul-priv-op.c) and its CPUID.

A #GP(0) from the guest is offered here first. Guest-kernel mode counts as ring 0 for this
emulator, guest-user mode as ring 3 (privileged instructions refused). Emulated: reads of
CR0/CR2/CR3/CR4 (CR3 is the kernel L4 even from user mode), `rdmsr`/`wrmsr`
(emu/pv/msr.py), `cli`/`sti` as no-ops when the guest has I/O privilege (they do not touch
the event mask), `wbinvd`, and `clts`. Anything else returns False: the caller reflects the
#GP to the guest.
"""

from __future__ import annotations

import threading

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone import x86_const as C
from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X

from emu.pv import guest
from emu.pv.guest import GuestFault

_cs = Cs(CS_ARCH_X86, CS_MODE_64)
_cs.detail = True
CR0_TS = 0x8
X86_CR4_PV_VISIBLE = 0x620


def _uc_reg(cs_reg: int) -> int:
    return getattr(X, f"UC_X86_REG_{_cs.reg_name(cs_reg).upper()}")


def iopl_ok(vcpu) -> bool:
    """iopl_ok() (emul-priv-op.c:154-162): guest kernel is CPL 1 (CPL 0 with
    VMASST_TYPE_architectural_iopl), user CPL 3."""
    arch_iopl = vcpu.domain.vm_assist & (1 << 4)
    cpl = (0 if arch_iopl else 1) if vcpu.kernel_mode else 3
    return cpl <= vcpu.iopl


def emulate_privileged_op(vcpu) -> bool:
    rip = vcpu.rr(X.UC_X86_REG_RIP)
    try:
        code = guest.read(vcpu, rip, 15)
    except GuestFault:
        try:
            code = guest.read(vcpu, rip, 16 - (rip & 0xF) if (rip & 0xFFF) > 0xFF0 else 1)
        except GuestFault:
            return False
    insn = next(_cs.disasm(code, rip, 1), None)
    if insn is None:
        return False
    if not vcpu.kernel_mode and insn.mnemonic not in ("cli", "sti"):
        return False
    try:
        if not _emulate(vcpu, insn):
            return False
    except Fault:
        vcpu.ack()
        raise
    vcpu.rw(X.UC_X86_REG_RIP, rip + insn.size)
    vcpu.ack()
    return True


def stack_segment_fault(vcpu) -> bool:
    """A #GP(0) that the CPU should have raised as #SS(0): a non-canonical memory operand
    through SS. In 64-bit mode es/cs/ss/ds overrides are ignored, so that is an rsp/rbp base
    without an fs/gs override (SDM vol. 3 6.15 "Interrupt 12"; XTF's memop-seg table).
    Unicorn raises #GP for every non-canonical access."""
    rip = vcpu.rr(X.UC_X86_REG_RIP)
    try:
        code = guest.read(vcpu, rip, 15)
    except GuestFault:
        return False
    insn = next(_cs.disasm(code, rip, 1), None)
    if insn is None:
        return False
    for op in insn.operands:
        if op.type != C.X86_OP_MEM:
            continue
        mem = op.mem
        seg = mem.segment
        via_ss = mem.base in (C.X86_REG_RSP, C.X86_REG_RBP) and seg not in (
            C.X86_REG_FS,
            C.X86_REG_GS,
        )
        if not via_ss:
            continue
        ea = mem.disp
        if mem.base == C.X86_REG_RIP:
            ea += insn.address + insn.size
        elif mem.base:
            ea += vcpu.rr(_uc_reg(mem.base))
        if mem.index:
            ea += vcpu.rr(_uc_reg(mem.index)) * mem.scale
        ea &= (1 << 64) - 1
        if (ea >> 47) not in (0, 0x1FFFF):
            return True
    return False


class Fault(Exception):
    """The emulated instruction raises this exception (emu/pv/traps.py delivers it)."""

    def __init__(self, vector: int, ec: int | None) -> None:
        super().__init__(vector, ec)
        self.vector, self.ec = vector, ec


def _ud(vcpu) -> bool:
    raise Fault(6, None)


def _emulate(vcpu, insn) -> bool:
    mn, ops = insn.mnemonic, insn.operands
    if mn in ("cli", "sti"):
        return iopl_ok(vcpu)
    if mn in ("wbinvd", "invd"):
        return True
    if mn in ("rdmsr", "wrmsr"):  # read_msr()/write_msr() (emul-priv-op.c:893-1215)
        from emu.pv import msr

        return (msr.rdmsr if mn == "rdmsr" else msr.wrmsr)(vcpu, guest_cpuid)
    if mn == "clts":
        vcpu.vcr0 &= ~CR0_TS
        return True
    if mn == "mov" and len(ops) == 2 and all(o.type == C.X86_OP_REG for o in ops):
        dst, src = _cs.reg_name(ops[0].reg), _cs.reg_name(ops[1].reg)
        if dst == "cr4":
            write_cr4(vcpu, vcpu.rr(_uc_reg(ops[1].reg)))
            return True
        if dst == "cr3":  # new_guest_cr3(): the new L4 must validate, else #GP
            from emu.pv.hypercall_mm import new_baseptr

            return new_baseptr(vcpu, vcpu.rr(_uc_reg(ops[1].reg)) >> 12, user=False) == 0
        if dst.startswith("dr"):  # x86emul_write_dr(): -ENODEV is #UD, other errors #GP
            rc = vcpu.debug.set(int(dst[2:]), vcpu.rr(_uc_reg(ops[1].reg)))
            return _ud(vcpu) if rc == -19 else rc == 0
        if src.startswith("dr"):  # x86emul_read_dr()
            value = vcpu.debug.get(int(src[2:]))
            if value is None:
                return _ud(vcpu)
            vcpu.rw(_uc_reg(ops[0].reg), value)
            return True
        if src.startswith("cr"):
            n = int(src[2:])
            value = {0: vcpu.vcr0, 2: vcpu.vcr2, 3: vcpu.guest_table << 12, 4: vcpu.vcr4}.get(n)
            if value is None:
                return False
            vcpu.rw(_uc_reg(ops[0].reg), value)
            return True
    return False


# ---- CR4 (pv/domain.c pv_fixup_guest_cr4 / pv_make_cr4, asm/pv/domain.h masks) ---------------

X86_CR4_TSD, X86_CR4_DE, X86_CR4_FSGSBASE, X86_CR4_OSXSAVE = 1 << 2, 1 << 3, 1 << 16, 1 << 18
PV_CR4_GUEST_MASK = X86_CR4_TSD | X86_CR4_DE | X86_CR4_FSGSBASE | X86_CR4_OSXSAVE
PV_CR4_GUEST_VISIBLE_MASK = 0x20 | 0x40 | 0x200 | 0x400  # PAE MCE OSFXSR OSXMMEXCPT


def write_cr4(vcpu, val: int) -> None:
    """Write CR4 (emul-priv-op.c:843-846): the guest's choice of the bits it controls,
    within the domain's CPUID policy; the real CR4 gets FSGSBASE only if the guest set it."""
    from emu.cpu.vcpu import REAL_CR4

    _, _, c1, d1 = guest_cpuid(vcpu, 1, 0)
    _, b7, _, _ = guest_cpuid(vcpu, 7, 0)
    val &= ~(
        (0 if d1 & (1 << 4) else X86_CR4_TSD)
        | (0 if d1 & (1 << 2) else X86_CR4_DE)
        | (0 if b7 & 1 else X86_CR4_FSGSBASE)
        | (0 if c1 & (1 << 26) else X86_CR4_OSXSAVE)
    )
    vcpu.vcr4 = (val & PV_CR4_GUEST_MASK) | (REAL_CR4 & PV_CR4_GUEST_VISIBLE_MASK)
    # Xen hands the guest's CR4.FSGSBASE to the real CR4 (pv/domain.c pv_make_cr4) and the
    # CPU checks WRFSBASE/WRGSBASE values; Unicorn does not (it loads a non-canonical base),
    # so its CR4.FSGSBASE stays clear and the #UD it raises lands in `fsgsbase_insn`.
    vcpu.rw(X.UC_X86_REG_CR4, REAL_CR4)


_FSGSBASE = {"rdfsbase", "rdgsbase", "wrfsbase", "wrgsbase"}


def fsgsbase_insn(vcpu, rip: int, code: bytes) -> bool:
    """RDFSBASE/RDGSBASE/WRFSBASE/WRGSBASE at `rip` with the guest's CR4.FSGSBASE set:
    done as the CPU does them (SDM vol. 2 "WRFSBASE/WRGSBASE": #GP(0) for a non-canonical
    64-bit value; the 32-bit forms zero-extend). False: not one of them, or the guest's
    CR4.FSGSBASE is clear (the #UD stands); raises Fault for the #GP. The GS base is the
    current mode's: Unicorn's GS_BASE holds it (vcpu.toggle_guest_mode swaps the other in)."""
    if not vcpu.vcr4 & X86_CR4_FSGSBASE:
        return False
    insn = next(_cs.disasm(code, rip, 1), None)
    if insn is None or insn.mnemonic not in _FSGSBASE or len(insn.operands) != 1:
        return False
    reg = insn.operands[0].reg
    wide = insn.operands[0].size == 8
    base_reg = X.UC_X86_REG_FS_BASE if insn.mnemonic[2] == "f" else X.UC_X86_REG_GS_BASE
    if insn.mnemonic.startswith("rd"):
        value = vcpu.rr(base_reg)
        vcpu.rw(_uc_reg(reg), value if wide else value & 0xFFFFFFFF)
    else:
        value = vcpu.rr(_uc_reg(reg))
        value = value if wide else value & 0xFFFFFFFF
        if (value >> 47) not in (0, 0x1FFFF):
            raise Fault(13, 0)
        vcpu.rw(base_reg, value)
    vcpu.rw(X.UC_X86_REG_RIP, rip + insn.size)
    return True


# ---- CPUID -----------------------------------------------------------------------------------

_cpuid_lock = threading.Lock()
_cpuid_uc: Uc | None = None
_cpuid_cache: dict[tuple[int, int], tuple[int, int, int, int]] = {}
XEN_CPUID_BASE = 0x40000000


def _host_cpuid(leaf: int, sub: int) -> tuple[int, int, int, int]:
    """The emulated CPU's own CPUID (a scratch Uc running `cpuid` at ring 0)."""
    global _cpuid_uc
    with _cpuid_lock:
        hit = _cpuid_cache.get((leaf, sub))
        if hit is not None:
            return hit
        if _cpuid_uc is None:
            _cpuid_uc = Uc(UC_ARCH_X86, UC_MODE_64)
            _cpuid_uc.mem_map(0x1000, 0x1000, UC_PROT_ALL)
            _cpuid_uc.mem_write(0x1000, b"\x0f\xa2")
        uc = _cpuid_uc
        uc.reg_write(X.UC_X86_REG_RAX, leaf)
        uc.reg_write(X.UC_X86_REG_RCX, sub)
        uc.emu_start(0x1000, 0x1002)
        r = tuple(
            uc.reg_read(getattr(X, f"UC_X86_REG_{n}")) & 0xFFFFFFFF
            for n in "RAX RBX RCX RDX".split()
        )
        _cpuid_cache[(leaf, sub)] = r  # type: ignore[assignment]
        return r  # type: ignore[return-value]


def guest_cpuid(vcpu, leaf: int, sub: int) -> tuple[int, int, int, int]:
    """guest_cpuid() for a PV domain: the CPU's leaves, the hypervisor bit set in leaf 1,
    Xen's leaves at 0x40000000 ("XenVMMXenVMM", version)."""
    if leaf == XEN_CPUID_BASE:
        return (XEN_CPUID_BASE + 5, 0x566E6558, 0x65584D4D, 0x4D4D566E)
    if leaf == XEN_CPUID_BASE + 1:
        from emu.version import XEN_MAJOR, XEN_MINOR

        return ((XEN_MAJOR << 16) | XEN_MINOR, 0, 0, 0)
    if XEN_CPUID_BASE < leaf < XEN_CPUID_BASE + 0x10000:
        return (0, 0, 0, 0)
    a, b, c, d = _host_cpuid(leaf, sub)
    if leaf == 1:
        c |= 1 << 31  # hypervisor
        b = (b & 0x00FFFFFF) | (vcpu.vcpu_id * 2 << 24)  # initial APIC ID
    return a, b, c, d
