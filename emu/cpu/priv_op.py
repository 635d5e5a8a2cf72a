"""Privileged-instruction emulation (#GP exits) and hypercalls (`syscall`), via capstone.

A guest kernel at CPL 3 raises #GP on every privileged instruction. The hypervisor fetches
the instruction through the guest's own tables, decodes it, and either emulates it on the
vCPU's *virtual* state or refuses it with a #GP reflected into the guest (which, with no
IDT, is a triple fault):

    emulated   mov cr3 (-> shadow switch), mov to/from cr0/cr2/cr4/cr8 within the rules below,
               hlt (block), cli/sti (virtual IF), invlpg, lidt, clts, wbinvd/invd (no-ops)
    refused    wrmsr/rdmsr, lgdt/lldt/ltr/lmsw, mov to/from dr*, clearing CR0.PG/PE or
               CR4.PAE, swapgs, sysret/sysexit, rdpmc, in/out to ports through #GP, anything else

No refused instruction ever reaches the real Uc state: its CR0/CR4/EFER/GDTR stay Xen's.

Hypercalls (64-bit PV ABI: rax = number, args rdi rsi rdx r10 r8, result in rax):
    console_io (18): CONSOLEIO_write (0) count, buf -> the guest's console lines (0; preempted
                     between 127-byte chunks by a continuation), CONSOLEIO_read (1) -> 0
    sched_op (29): SCHEDOP_yield (0), SCHEDOP_block (1), SCHEDOP_shutdown (2, rsi -> reason)
    set_timer_op (15): absolute NOW() deadline in ns, wakes a blocked vCPU (0 cancels)
    xen_version (17): XENVER_version (0) -> (major << 16) | minor
Anything else returns -ENOSYS.
"""

from __future__ import annotations

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone import x86_const as C
from unicorn import x86_const as X

from emu.domain import CONSOLE_LINE, SHUTDOWN_crash, SHUTDOWN_poweroff
from emu.mm import guestmem
from emu.mm.page import PAGE_SHIFT, PTE_ADDR_MASK
from emu.version import XEN_MAJOR, XEN_MINOR

ENOSYS, EINVAL, EFAULT = 38, 22, 14
HC_console_io, HC_set_timer_op, HC_xen_version, HC_sched_op = 18, 15, 17, 29
CONSOLEIO_write, CONSOLEIO_read = 0, 1
SCHEDOP_yield, SCHEDOP_block, SCHEDOP_shutdown = 0, 1, 2
CONSOLE_KBUF = 128  # guest_console_write()'s kbuf
SYSCALL_LEN = 2  # 0f 05
CR0_PE, CR0_TS, CR0_PG = 0x1, 0x8, 0x80000000
CR4_PAE = 0x20

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
    if insn is None or not _emulate(vcpu, insn):
        vcpu.stop(("exc", 13, 0, None))
        return
    vcpu.stats["gp_emulated"] += 1
    if vcpu.pending is None or vcpu.pending[0] != "crash":
        uc.reg_write(X.UC_X86_REG_RIP, rip + insn.size)
        vcpu.ack(uc)  # after the RIP write, as docs/design.md's Unicorn facts require


def _emulate(vcpu, insn) -> bool:
    """Emulate one privileged instruction; False refuses it (#GP to the guest)."""
    mn = insn.mnemonic
    ops = insn.operands
    if mn == "hlt":
        if not vcpu.vif:
            _vcpu_down(vcpu)  # hvm_hlt(): halting with interrupts off takes the vCPU down
        else:
            vcpu.stop(("block",))
        return True
    if mn == "cli":
        vcpu.vif = False
        return True
    if mn == "sti":
        vcpu.vif = True
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


# ---- hypercalls -------------------------------------------------------------------------


def hypercall(vcpu) -> None:
    """`syscall` from the guest kernel (called from the UC_HOOK_INSN syscall hook)."""
    uc = vcpu.uc
    nr = uc.reg_read(X.UC_X86_REG_RAX)
    a1 = uc.reg_read(X.UC_X86_REG_RDI)
    a2 = uc.reg_read(X.UC_X86_REG_RSI)
    a3 = uc.reg_read(X.UC_X86_REG_RDX)
    vcpu.stats["hypercalls"] += 1
    # perfc_incra(hypercalls, eax) after every call, preempted ones too (hvm/hypercall.c:193)
    vcpu.machine.perfc.incra("hypercalls", nr, vcpu.processor)
    ret = -ENOSYS
    if nr == HC_console_io:
        ret = _console_io(vcpu, a1, a2, a3)
        if ret is None:  # a continuation: the call runs again on the next slice
            return
    elif nr == HC_sched_op:
        ret = _sched_op(vcpu, a1, a2)
    elif nr == HC_set_timer_op:
        vcpu.wake_at = a1 or None
        ret = 0
    elif nr == HC_xen_version:
        ret = (XEN_MAJOR << 16) | XEN_MINOR if a1 == 0 else -ENOSYS
    uc.reg_write(X.UC_X86_REG_RAX, ret & 0xFFFFFFFFFFFFFFFF)


def _console_io(vcpu, cmd: int, count: int, buf: int) -> int | None:
    if cmd == CONSOLEIO_read:
        return 0
    if cmd != CONSOLEIO_write:
        return -ENOSYS
    return _console_write(vcpu, count & 0xFFFFFFFF, buf)


# is_console_printable(): isprint() plus \n and \t; everything else is stripped.
_UNPRINTABLE = bytes(c for c in range(256) if not (0x20 <= c < 0x7F or c in (0x09, 0x0A)))


def _console_write(vcpu, count: int, buf: int) -> int | None:
    """guest_console_write() (xen/drivers/char/console.c) for a domU: 127 bytes at a time
    through `kbuf`, non-printables stripped, output held in the domain's line buffer until a
    newline or until it would overflow, then one `(dN) ` line. Between chunks, when the
    scheduler wants the pCPU (hypercall_preempt_check()), the rest becomes a continuation:
    the arguments advance and the guest re-executes the `syscall` on its next slice, so a
    guest flooding this hypercall gives the pCPU up within one chunk. Returns 0, -EFAULT,
    or None for a continuation (the result is left to the re-executed call)."""
    con = vcpu.domain.hvm.console
    m, dom, cr3 = vcpu.machine, vcpu.domain, vcpu.guest_cr3
    kcount = 0
    while count > 0:
        if kcount and vcpu.kicked:
            _continuation(vcpu, HC_console_io, CONSOLEIO_write, count, buf)
            return None
        kcount = min(count, CONSOLE_KBUF - 1)
        try:
            data = guestmem.read(m, dom, cr3, buf, kcount)
        except guestmem.GuestMemError:
            return -EFAULT
        nl = data.find(b"\n")
        seg = data if nl < 0 else data[:nl]
        kcount = len(seg) + (nl >= 0)  # the bytes consumed, up to and including a newline
        out = seg.translate(None, _UNPRINTABLE)
        with con.lock:
            if nl < 0 and len(con.buf) + len(out) < CONSOLE_LINE - 1:
                con.buf += out  # buffer the output until a newline
                text = None
            else:
                text = (con.buf + out).decode("latin-1")
                con.buf.clear()
        if text is not None:
            con.emit_line(text)
        buf += kcount
        count -= kcount
    return 0


def _continuation(vcpu, nr: int, *args: int) -> None:
    """hypercall_create_continuation() for a 64-bit PV guest: the call's registers get the
    remaining arguments and RIP goes back to the `syscall`. Inside the syscall hook Unicorn
    still has to add the instruction's length to RIP (helper_syscall in Unicorn's
    qemu/target/i386/seg_helper.c adds next_eip_addend after the hooks), so RIP is set 2
    bytes before the `syscall`."""
    uc = vcpu.uc
    arg_regs = (X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX)
    for reg, value in zip(arg_regs, args, strict=True):
        uc.reg_write(reg, value & 0xFFFFFFFFFFFFFFFF)
    uc.reg_write(X.UC_X86_REG_RAX, nr)
    uc.reg_write(X.UC_X86_REG_RIP, uc.reg_read(X.UC_X86_REG_RIP) - SYSCALL_LEN)
    vcpu.stats["continuations"] += 1
    vcpu.stop(("slice",))


def _sched_op(vcpu, cmd: int, arg: int) -> int:
    if cmd == SCHEDOP_yield:
        vcpu.machine.perfc.incr("vcpu_yield", vcpu.processor)  # sched/core.c:1537
        vcpu.stop(("yield",))
        return 0
    if cmd == SCHEDOP_block:
        vcpu.vif = True  # SCHEDOP_block enables event delivery first
        vcpu.stop(("block",))
        return 0
    if cmd == SCHEDOP_shutdown:
        try:
            raw = guestmem.read(vcpu.machine, vcpu.domain, vcpu.guest_cr3, arg, 4)
        except guestmem.GuestMemError:
            return -EFAULT
        reason = int.from_bytes(raw, "little")
        if reason > SHUTDOWN_crash:
            return -EINVAL
        vcpu.stop(("shutdown", reason))
        return 0
    return -ENOSYS
