"""Privileged-instruction emulation (#GP exits) and the guest's own `syscall`, via capstone.

The emulated CPU runs guest code at ring 3, so every privileged instruction raises #GP. The
hypervisor fetches the instruction through the guest's own tables, decodes it, and -- when
the guest's virtual CPL (`vcpu.vcpl`) is 0, as a real HVM guest kernel's is -- emulates it on
the vCPU's *virtual* state, or refuses it with a #GP reflected into the guest (which, with no
IDT, is a triple fault):

    emulated   mov cr3 (-> shadow switch), mov to/from cr0/cr2/cr4/cr8 within the rules below,
               hlt (block), cli/sti (virtual IF), invlpg, lidt, clts, wbinvd/invd (no-ops),
               wrmsr/rdmsr of Xen's hypercall-page MSR (emu/cpu/hvm_hypercall.py) and of the
               guest's STAR/LSTAR/CSTAR/SFMASK, sysret (back to CPL 3)
    refused    every other MSR, lgdt/lldt/ltr/lmsw, mov to/from dr*, clearing CR0.PG/PE or
               CR4.PAE, swapgs, sysexit, rdpmc, in/out to ports through #GP, anything else;
               everything at a virtual CPL 3

No refused instruction ever reaches the real Uc state: its CR0/CR4/EFER/GDTR stay Xen's.

`syscall` is the guest's business (hypercalls are `vmcall`, emu/cpu/hvm_hypercall.py): it
goes to the guest's LSTAR at CPL 0, as the CPU does with EFER.SCE set (rcx = the next RIP,
r11 = RFLAGS, RFLAGS &= ~SFMASK).
"""

from __future__ import annotations

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone import x86_const as C
from unicorn import x86_const as X

from emu.cpu import hvm_hypercall
from emu.domain import SHUTDOWN_poweroff
from emu.mm import guestmem
from emu.mm.page import PAGE_SHIFT, PTE_ADDR_MASK

SYSCALL_LEN = 2  # 0f 05
CR0_PE, CR0_TS, CR0_PG = 0x1, 0x8, 0x80000000
CR4_PAE = 0x20
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SFMASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
SYSCALL_MSRS = (MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SFMASK)
RFLAGS_IF, RFLAGS_RF, RFLAGS_VM = 0x200, 0x10000, 0x20000
RFLAGS_IOPL = 0x3000
RFLAGS_FIXED = 0x2
JUMPED = "jumped"  # _emulate(): emulated, and RIP is already where the instruction sent it

_cs = Cs(CS_ARCH_X86, CS_MODE_64)
_cs.detail = True
_UC_REG: dict[int, int] = {}


def _uc_reg(cs_reg: int) -> int:
    r = _UC_REG.get(cs_reg)
    if r is None:
        name = _cs.reg_name(cs_reg).upper()
        r = _UC_REG[cs_reg] = getattr(X, f"UC_X86_REG_{name}")
    return r


def _reg_value(vcpu, cs_reg: int) -> int:
    return vcpu.uc.reg_read(_uc_reg(cs_reg))


def _ea(vcpu, insn, op) -> int:
    """Effective (linear) address of a memory operand."""
    m = op.mem
    addr = m.disp
    if m.base == C.X86_REG_RIP:
        addr += insn.address + insn.size
    elif m.base:
        addr += _reg_value(vcpu, m.base)
    if m.index:
        addr += _reg_value(vcpu, m.index) * m.scale
    if m.segment == C.X86_REG_FS:
        addr += vcpu.uc.reg_read(X.UC_X86_REG_FS_BASE)
    elif m.segment == C.X86_REG_GS:
        addr += vcpu.uc.reg_read(X.UC_X86_REG_GS_BASE)
    return addr & 0xFFFFFFFFFFFFFFFF


def _cr_number(cs_reg: int) -> int | None:
    name = _cs.reg_name(cs_reg)
    return int(name[2:]) if name.startswith("cr") else None


def fetch(vcpu, rip: int):
    """Decode the instruction at `rip` through the guest's own tables (None if unreadable)."""
    code = guestmem.read_partial(vcpu.machine, vcpu.domain, vcpu.guest_cr3, rip, 15)
    return next(_cs.disasm(code, rip, 1), None) if code else None


def emulate_gp(vcpu) -> None:
    """Handle a #GP raised by the guest at CPL 3 (called from the INTR hook)."""
    uc = vcpu.uc
    rip = uc.reg_read(X.UC_X86_REG_RIP)
    insn = fetch(vcpu, rip)
    done = insn is not None and not vcpu.vcpl and _emulate(vcpu, insn)
    if not done:
        vcpu.stop(("exc", 13, 0, None))
        return
    vcpu.stats["gp_emulated"] += 1
    if vcpu.pending is None or vcpu.pending[0] != "crash":
        if done is not JUMPED:
            uc.reg_write(X.UC_X86_REG_RIP, rip + insn.size)
        vcpu.ack(uc)  # after the RIP write, as docs/design.md's Unicorn facts require


def _emulate(vcpu, insn) -> bool | str:
    """Emulate one privileged instruction; False refuses it (#GP to the guest), JUMPED
    when the instruction set RIP itself."""
    mn = insn.mnemonic
    ops = insn.operands
    if mn == "hlt":
        if not vcpu.vif:
            _vcpu_down(vcpu)  # hvm_hlt(): halting with interrupts off takes the vCPU down
        else:
            vcpu.block()
        return True
    if mn in ("wrmsr", "rdmsr"):
        return _msr(vcpu, mn == "wrmsr")
    if mn == "sysretq":
        return _sysret(vcpu)
    if mn == "cli":
        vcpu.vif = False
        return True
    if mn == "sti":
        vcpu.vif = True
        if vcpu.upcall_irr:
            vcpu.stop(("slice",))  # a pending upcall is taken now (emu/cpu/vcpu.py run())
        return True
    if mn in ("wbinvd", "invd"):
        return True
    if mn == "clts":
        vcpu.vcr0 &= ~CR0_TS
        return True
    if mn == "invlpg" and ops and ops[0].type == C.X86_OP_MEM:
        vcpu.domain.paging.invlpg(vcpu, _ea(vcpu, insn, ops[0]))
        return True
    if mn == "lidt" and ops and ops[0].type == C.X86_OP_MEM:
        try:
            raw = guestmem.read(
                vcpu.machine, vcpu.domain, vcpu.guest_cr3, _ea(vcpu, insn, ops[0]), 10
            )
        except guestmem.GuestMemError:
            return False
        vcpu.guest_idt = (int.from_bytes(raw[2:10], "little"), int.from_bytes(raw[0:2], "little"))
        return True
    if mn == "mov" and len(ops) == 2 and all(o.type == C.X86_OP_REG for o in ops):
        dst, src = _cr_number(ops[0].reg), _cr_number(ops[1].reg)
        if dst is not None:
            return _write_cr(vcpu, dst, _reg_value(vcpu, ops[1].reg))
        if src is not None:
            value = _read_cr(vcpu, src)
            if value is None:
                return False
            vcpu.uc.reg_write(_uc_reg(ops[0].reg), value)
            return True
    return False


def _vcpu_down(vcpu) -> None:
    """hvm_vcpu_down(): offline; when no vCPU of the domain is left online, power off."""
    vcpu.down = True
    if all(v.down for v in vcpu.domain.vcpus):
        vcpu.machine.console.printk(
            f"arch/x86/hvm/hvm.c:1729:{vcpu.name} All CPUs offline -- powering off.\n"
        )
        vcpu.stop(("shutdown", SHUTDOWN_poweroff))
    else:
        vcpu.stop(("block",))


def _read_cr(vcpu, n: int) -> int | None:
    return {0: vcpu.vcr0, 2: vcpu.guest_cr2, 3: vcpu.guest_cr3, 4: vcpu.vcr4}.get(
        n, vcpu.vcr8 if n == 8 else None
    )


def _write_cr(vcpu, n: int, value: int) -> bool:
    if n == 3:
        nr_gfns = len(vcpu.domain.p2m)
        if (value & PTE_ADDR_MASK) >> PAGE_SHIFT >= nr_gfns:
            return False  # a CR3 outside the guest's memory: #GP, not a shadow of nothing
        vcpu.load_cr3(value)
        return True
    if n == 0:
        if (value & (CR0_PG | CR0_PE)) != (CR0_PG | CR0_PE) or value >> 32:
            return False  # leaving long mode is not emulated
        vcpu.vcr0 = value
        return True
    if n == 4:
        if not value & CR4_PAE or value >> 32:
            return False
        vcpu.vcr4 = value
        return True
    if n == 2:
        vcpu.guest_cr2 = value
        return True
    if n == 8:
        vcpu.vcr8 = value & 0xF
        return True
    return False


# ---- MSRs, syscall, sysret ------------------------------------------------------------------


def _msr(vcpu, write: bool) -> bool:
    uc = vcpu.uc
    msr = uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
    if write:
        value = (uc.reg_read(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32
        value |= uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF
        if msr in SYSCALL_MSRS:
            if msr in (MSR_LSTAR, MSR_CSTAR) and not guestmem.canonical(value):
                return False
            vcpu.msrs[msr] = value
            return True
        return hvm_hypercall.wrmsr_xen(vcpu, msr, value)
    value = vcpu.msrs.get(msr, 0) if msr in SYSCALL_MSRS else hvm_hypercall.rdmsr_xen(vcpu, msr)
    if value is None:
        return False
    uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
    uc.reg_write(X.UC_X86_REG_RDX, value >> 32)
    return True


def guest_syscall(vcpu) -> None:
    """`syscall` (the UC_HOOK_INSN hook): to the guest's LSTAR at CPL 0. Unicorn adds the
    instruction's length to RIP after the hook (helper_syscall in Unicorn's
    qemu/target/i386/seg_helper.c adds next_eip_addend), so RIP is set 2 bytes early."""
    uc = vcpu.uc
    rip = uc.reg_read(X.UC_X86_REG_RIP)  # the syscall's own address
    rflags = vcpu.reg("rflags") & ~RFLAGS_IF | (RFLAGS_IF if vcpu.vif else 0)
    uc.reg_write(X.UC_X86_REG_RCX, rip + SYSCALL_LEN)
    uc.reg_write(X.UC_X86_REG_R11, rflags & ~RFLAGS_RF)
    mask = vcpu.msrs.get(MSR_SFMASK, 0)
    if mask & RFLAGS_IF:
        vcpu.vif = False
    real = (rflags & ~mask & ~(RFLAGS_RF | RFLAGS_VM | RFLAGS_IOPL)) | RFLAGS_IF | RFLAGS_FIXED
    uc.reg_write(X.UC_X86_REG_EFLAGS, real)
    vcpu.vcpl = 0
    uc.reg_write(X.UC_X86_REG_RIP, (vcpu.msrs.get(MSR_LSTAR, 0) - SYSCALL_LEN) & (2**64 - 1))


def _sysret(vcpu) -> str | bool:
    """sysretq at CPL 0: to rcx at CPL 3, RFLAGS from r11 (its IF becomes the virtual IF)."""
    uc = vcpu.uc
    target = uc.reg_read(X.UC_X86_REG_RCX)
    if not guestmem.canonical(target):
        return False
    r11 = uc.reg_read(X.UC_X86_REG_R11)
    vcpu.vif = bool(r11 & RFLAGS_IF)
    real = (r11 & ~(RFLAGS_RF | RFLAGS_VM | RFLAGS_IOPL)) | RFLAGS_IF | RFLAGS_FIXED
    uc.reg_write(X.UC_X86_REG_EFLAGS, real & 0x3F7FD7)
    uc.reg_write(X.UC_X86_REG_RIP, target)
    vcpu.vcpl = 3
    return JUMPED
