"""Exceptions and events for 64-bit PV vCPUs (pv/traps.c, x86_64/entry.S, pv/iret.c).

- `on_exception`: what Xen does with a fault or `int n` from the guest: #GP(0) goes to the
  privileged-instruction emulator first (emu/pv/priv_op.py); `int n` is delivered only if
  the trap table's DPL allows it from the current mode (else #GP((n<<3)|2)); everything else
  is bounced to the guest's trap table.
- `bounce`: create_bounce_frame(): the PV exception frame on the guest kernel stack.
- `invalid_op`: the forced-emulation prefix `ud2; "xen"; cpuid` (pv/emul-inv-op.c), the
  FSGSBASE instructions when the guest enabled them (emu/pv/priv_op.py), else #UD.
- `do_iret`: the iret hypercall.
"""

from __future__ import annotations

import struct

from unicorn import x86_const as X

from emu.pv import guest
from emu.pv.guest import GuestFault
from emu.pv.segs import load_cs

X86_EXC_HAVE_EC = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
VECTOR_NAMES = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
    8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
    17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP", 29: "#VC", 30: "#SX",
}  # fmt: skip
RF_TF, RF_IF, RF_IOPL, RF_NT, RF_RF, RF_VM, RF_AC = (
    0x100,
    0x200,
    0x3000,
    0x4000,
    1 << 16,
    1 << 17,
    1 << 18,
)
TI_IF = 4  # trap_info.flags: mask events on entry
PFEC_user_mode = 4
FEP = b"\x0f\x0bxen"
VMASST_TYPE_architectural_iopl = 4
HYPERVISOR_VIRT_START, HYPERVISOR_VIRT_END = 0xFFFF800000000000, 0xFFFF880000000000


def vcpu_info_maddr(vcpu) -> int:
    return (vcpu.domain.pv.shared_info_mfn << 12) + vcpu.vcpu_id * 64


def upcall_mask(vcpu) -> int:
    return int(vcpu.machine.ram.u8[vcpu_info_maddr(vcpu) + 1]) & 1


def set_upcall_mask(vcpu, value: int) -> None:
    vcpu.machine.ram.u8[vcpu_info_maddr(vcpu) + 1] = value


def bounce(vcpu, vector_ec: int | None, handler: int, mask_events: bool) -> bool:
    """create_bounce_frame() (entry.S:536-677); False if the frame cannot be written."""
    rip = vcpu.rr(X.UC_X86_REG_RIP)
    rsp = vcpu.rr(X.UC_X86_REG_RSP)
    rflags = vcpu.rr(X.UC_X86_REG_EFLAGS)
    rcx, r11 = vcpu.rr(X.UC_X86_REG_RCX), vcpu.rr(X.UC_X86_REG_R11)
    cs, ss = vcpu.rr(X.UC_X86_REG_CS), vcpu.rr(X.UC_X86_REG_SS)
    if vcpu.kernel_mode:
        sp, saved_cs = rsp, cs & ~3  # RPL 0 tells the guest it interrupted its kernel
    else:
        vcpu.toggle_guest_mode()
        sp, saved_cs = vcpu.kernel_sp, cs | 3
    sp &= ~15
    mask = upcall_mask(vcpu)
    fl = (rflags & ~(RF_IF | RF_IOPL)) | (0 if mask else RF_IF)
    if vcpu.domain.vm_assist & (1 << VMASST_TYPE_architectural_iopl):
        fl |= vcpu.iopl << 12
    words = [rcx, r11] + ([vector_ec] if vector_ec is not None else [])
    words += [rip, saved_cs | (mask << 32), fl, rsp, ss]
    new_sp = (sp - 8 * len(words)) & 0xFFFFFFFFFFFFFFFF
    if HYPERVISOR_VIRT_START < new_sp + 8 * len(words) and new_sp < HYPERVISOR_VIRT_END + 0x40:
        return False
    try:
        guest.write(vcpu, new_sp, struct.pack(f"<{len(words)}Q", *words))
    except GuestFault:
        return False
    if mask_events:
        set_upcall_mask(vcpu, 1)
    new_fl = (rflags & ~(RF_AC | RF_VM | RF_RF | RF_NT | RF_TF)) | RF_IF
    vcpu.rw(X.UC_X86_REG_RSP, new_sp)
    vcpu.rw(X.UC_X86_REG_EFLAGS, new_fl)
    vcpu.rw(X.UC_X86_REG_RCX, handler)  # the exit is a sysret
    vcpu.rw(X.UC_X86_REG_R11, new_fl)
    load_cs(vcpu, 0xE033)  # from compat-mode code too: the cache must say 64-bit
    vcpu.rw(X.UC_X86_REG_SS, 0xE02B)
    vcpu.rw(X.UC_X86_REG_RIP, handler)
    vcpu.rip_written = True
    vcpu.stats["bounced"] += 1
    return True


def deliver_events(vcpu) -> None:
    """On the way back to the guest (entry.S test_all_events): with an upcall pending and
    not masked, bounce to the event callback, masking events (TBF_INTERRUPT)."""
    ram = vcpu.machine.ram
    vi = vcpu_info_maddr(vcpu)
    if not ram.u8[vi] or ram.u8[vi + 1] & 1:
        return
    cb = vcpu.callbacks.get(0)
    if cb is None or not cb[0]:
        return
    if not bounce(vcpu, None, cb[0], True):
        vcpu.crash("")


def inject(vcpu, vector: int, ec: int | None, cr2: int | None = None) -> None:
    """pv_inject_event() then the bounce on the way back to the guest."""
    if vector == 14 and cr2 is not None:
        vcpu.vcr2 = cr2
        vcpu.machine.ram.write(vcpu_info_maddr(vcpu) + 16, struct.pack("<Q", cr2))
    ti = vcpu.trap_ctxt.get(vector)
    if ti is None or ti[2] == 0:
        name = VECTOR_NAMES.get(vector, "???")
        vcpu.machine.pv.warn(vcpu, f"Unhandled: vec {vector}, {name}[{(ec or 0):04x}]")
        if vector == 14 and cr2 is not None:
            show_page_walk(vcpu, cr2)
        vcpu.crash("")  # create_bounce_frame_bad_bounce_ip (entry.S:628-631)
        return
    if not bounce(vcpu, ec, ti[2], bool(ti[0] & TI_IF)):
        vcpu.crash("")  # domain_crash_page_fault_*x8 (entry.S:640-676)


def show_page_walk(vcpu, addr: int) -> None:
    """show_page_walk() (xen/arch/x86/traps.c:320-385) through the vCPU's current tables."""
    m = vcpu.machine
    p = m.console.printk
    p(f"Pagetable walk from {addr:016x}:\n")
    if (addr >> 47) not in (0, 0x1FFFF):
        return
    mfn = vcpu.cr3_mfn()
    nr = m.ram.nr_frames
    for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
        idx = (addr >> shift) & 511
        e = int(m.ram.u64[(mfn << 9) + idx])
        mfn = (e & 0x000FFFFFFFFFF000) >> 12
        pfn = int(m.m2p[mfn]) if mfn < nr else (1 << 64) - 1
        pse = " (PSE)" if level in (2, 3) and e & 0x80 else ""
        p(f" L{level}[{idx:#05x}] = {e:016x} {pfn:016x}{pse}\n")
        if not e & 1 or pse or mfn >= nr:
            return


def on_exception(vcpu, intno: int, err: int, is_int: bool) -> None:
    """From the INTR hook (RIP: faulting instruction, or the next one for `int n`)."""
    if is_int:
        if intno in (3, 4):  # int3 / into: Xen's IDT gates are DPL 3
            inject(vcpu, intno, None)
            return
        ti = vcpu.trap_ctxt.get(intno)
        if ti is not None and ti[0] & 3 >= (1 if vcpu.kernel_mode else 3):
            inject(vcpu, intno, None)  # a software interrupt: no error code
            return
        vcpu.rw(X.UC_X86_REG_RIP, vcpu.rr(X.UC_X86_REG_RIP) - 2)
        inject(vcpu, 13, (intno << 3) | 2)
        return
    if intno == 14:
        cr2 = vcpu._cr2()
        ec = (err & ~PFEC_user_mode) | (0 if vcpu.kernel_mode else PFEC_user_mode)
        inject(vcpu, 14, ec, cr2)
        return
    if intno == 13 and err == 0:
        from emu.pv.priv_op import Fault, emulate_privileged_op, stack_segment_fault

        try:
            done = emulate_privileged_op(vcpu)
        except Fault as f:  # e.g. mov to %dr4 with CR4.DE: #UD
            inject(vcpu, f.vector, f.ec)
            return
        if done:
            vcpu.stats["emulated"] += 1
            return
        if stack_segment_fault(vcpu):
            inject(vcpu, 12, 0)
            return
    if intno == 8:
        vcpu.stop(("crash", "internal", "double fault"))
        return
    inject(vcpu, intno, err if intno in X86_EXC_HAVE_EC else None)


def invalid_op(vcpu) -> None:
    """#UD (pv_emulate_invalid_op): FEP + cpuid is emulated, anything else reflected."""
    rip = vcpu.rr(X.UC_X86_REG_RIP)
    try:
        code = guest.read(vcpu, rip, 7)
    except GuestFault:
        code = b""
    if code[:5] == FEP and code[5:7] == b"\x0f\xa2":
        from emu.pv.priv_op import guest_cpuid

        leaf, sub = vcpu.rr(X.UC_X86_REG_RAX) & 0xFFFFFFFF, vcpu.rr(X.UC_X86_REG_RCX)
        a, b, c, d = guest_cpuid(vcpu, leaf, sub & 0xFFFFFFFF)
        vcpu.rw(X.UC_X86_REG_RAX, a)
        vcpu.rw(X.UC_X86_REG_RBX, b)
        vcpu.rw(X.UC_X86_REG_RCX, c)
        vcpu.rw(X.UC_X86_REG_RDX, d)
        vcpu.rw(X.UC_X86_REG_RIP, rip + 7)
        vcpu.pending = ("again",)
        return
    from emu.pv.priv_op import Fault, fsgsbase_insn

    try:
        done = fsgsbase_insn(vcpu, rip, code or _to_page_end(vcpu, rip))
    except Fault as f:  # a non-canonical base: #GP(0)
        inject(vcpu, f.vector, f.ec)
        done = True
    if done:
        vcpu.pending = ("again",)
        return
    inject(vcpu, 6, None)
    if vcpu.pending is None or vcpu.pending[0] == "ud":
        vcpu.pending = ("again",)


def _to_page_end(vcpu, va: int) -> bytes:
    """The instruction bytes from `va` to the end of its page (the next one is unmapped)."""
    try:
        return guest.read(vcpu, va, min(7, 0x1000 - (va & 0xFFF)))
    except GuestFault:
        return b""


def user_syscall(vcpu) -> None:
    """`syscall` from guest user mode: the syscall callback (entry.S:27-64), or #UD."""
    cs = vcpu.rr(X.UC_X86_REG_CS)
    cb = vcpu.callbacks.get(7 if cs == 0xE023 else 2)
    rip = vcpu.rr(X.UC_X86_REG_RIP)  # the syscall itself (see vcpu._on_syscall)
    if cb is None or cb[0] == 0:
        inject(vcpu, 6, None)  # #UD at the syscall
        return
    vcpu.rw(X.UC_X86_REG_RIP, rip + 2)  # the frame's rip: after the syscall
    vcpu.rw(X.UC_X86_REG_RCX, rip + 2)
    vcpu.rw(X.UC_X86_REG_R11, vcpu.rr(X.UC_X86_REG_EFLAGS))
    fl = vcpu.rr(X.UC_X86_REG_EFLAGS) & ~0x400  # DF cleared
    vcpu.rw(X.UC_X86_REG_EFLAGS, fl)
    if not bounce(vcpu, None, cb[0], bool(cb[1] & 1)):
        vcpu.crash("")  # domain_crash_page_fault_*x8 (entry.S:640-676)


def do_iret(vcpu) -> int | None:
    """HYPERVISOR_iret (pv/iret.c:52-107); returns the saved rax, or None after a crash."""
    rsp = vcpu.rr(X.UC_X86_REG_RSP)
    try:
        rax, r11, rcx, flags, rip, cs, rflags, sp, ss = struct.unpack(
            "<9Q", guest.read(vcpu, rsp, 72)
        )
    except GuestFault:
        vcpu.machine.pv.warn(vcpu, "Fault while reading IRET context from guest stack")
        vcpu.crash("domain_crash called from arch/x86/pv/iret.c:105")
        return None
    if cs & 3 == 3 and vcpu.kernel_mode:
        if not vcpu.guest_table_user:
            vcpu.machine.pv.warn(vcpu, "Guest switching to user mode with no user page tables")
            vcpu.crash("domain_crash called from arch/x86/pv/iret.c:105")
            return None
        vcpu.toggle_guest_mode()
    if vcpu.domain.vm_assist & (1 << VMASST_TYPE_architectural_iopl):
        vcpu.iopl = (rflags >> 12) & 3
    saved_if = rflags & RF_IF
    rflags = (rflags & 0x3F7FD5 & ~(RF_IOPL | RF_VM)) | RF_IF | 2
    vcpu.rw(X.UC_X86_REG_RSP, sp)
    vcpu.rw(X.UC_X86_REG_EFLAGS, rflags)
    if not flags & 0x100:  # VGCF_in_syscall clear: an iretq, rcx and r11 restored
        vcpu.rw(X.UC_X86_REG_RCX, rcx)
        vcpu.rw(X.UC_X86_REG_R11, r11)
    else:
        vcpu.rw(X.UC_X86_REG_RCX, rip)
        vcpu.rw(X.UC_X86_REG_R11, rflags)
    set_upcall_mask(vcpu, 0 if saved_if else 1)
    load_cs(vcpu, (cs & 0xFFFF) | 3)  # iret.c:82 "force guest privilege"; a compat CS runs 32-bit
    vcpu.rw(X.UC_X86_REG_RIP, rip)
    vcpu.rip_written = True
    return rax


def _io_refused(vcpu) -> bool:
    """guest_io_okay() (emul-priv-op.c:165-208): vIOPL, else #GP(0) (no I/O bitmap here).
    Unicorn runs IN/OUT at CPL 3 without a fault, so the hook refuses it: the run stops and
    `io_fault` puts back what the instruction changed before the #GP is delivered."""
    from emu.pv.priv_op import iopl_ok

    if iopl_ok(vcpu):
        return False
    vcpu.stop(("io_gp", vcpu.rr(X.UC_X86_REG_RIP), vcpu.rr(X.UC_X86_REG_RAX)))
    return True


def io_fault(vcpu, rip: int, rax: int) -> None:
    vcpu.rw(X.UC_X86_REG_RIP, rip)
    vcpu.rw(X.UC_X86_REG_RAX, rax)
    inject(vcpu, 13, 0)


def port_out(vcpu, port: int, size: int, value: int) -> None:
    """Port writes from a domain without rights to the port are dropped
    (emul-priv-op.c:211-226)."""
    _io_refused(vcpu)


def port_in(vcpu, port: int, size: int) -> int:
    """Reads of ports the domain has no rights to return all-ones."""
    _io_refused(vcpu)
    return (1 << (8 * size)) - 1
