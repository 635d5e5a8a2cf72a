"""64-bit PV hypercalls: `syscall` from guest-kernel mode (pv/hypercall.c).

Number in rax, arguments rdi rsi rdx r10 r8, result in rax; the return is a `sysret`, so
rcx/r11 hold rip/rflags (the hypercall page's stub pops its own copies back). A debug Xen
then overwrites the argument registers the hypercall used with 0xdeadbeefdeadf00d unless
the result is -ENOSYS (asm/hypercall.h clobber_regs). Unknown numbers: -ENOSYS.
"""

from __future__ import annotations

import struct

from unicorn import x86_const as X

from emu.pv import guest, mm, traps
from emu.pv.guest import GuestFault
from emu.pv.hcall_table import (
    ARG_REGS,
    CLOBBER,
    HANDLERS,
    MASK64,
    NARGS,
    canonical,
    hypercall,
)
from emu.pv.mm import EFAULT, EINVAL, ENOSYS, EPERM


def dispatch(vcpu) -> None:
    """One hypercall (a hot path: registers move in one batch each way)."""
    nr, rip, rflags, *args = vcpu.hc_in.read()
    vcpu.stats["hypercalls"] += 1
    fn = HANDLERS.get(nr)
    ret = fn(vcpu, *args) if fn is not None else -ENOSYS
    if ret is None:  # the vCPU crashed, or iret already restored its registers
        return
    n = NARGS.get(nr, 0) if ret != -ENOSYS and vcpu.machine.debug_build else 0
    if vcpu.rip_written:  # an iret inside a multicall chose rcx/r11 itself
        vcpu.rw(X.UC_X86_REG_RAX, ret)
        for r in ARG_REGS[:n]:
            vcpu.rw(r, CLOBBER)
        return
    # sysret: rcx = the instruction after the syscall (RIP reads as the syscall itself,
    # emu/pv/vcpu.py _on_syscall), r11 = rflags; then the debug build's clobbers.
    vcpu.hc_out[n].write([rip + 2, rflags, ret] + [CLOBBER] * n)
    if vcpu.pending is None and vcpu.ram_mm[vcpu.upcall_at]:
        # An event to deliver on the way out: the frame records the sysret's state.
        vcpu.rw(X.UC_X86_REG_RIP, rip + 2)
        vcpu.rw(X.UC_X86_REG_CS, 0xE033)
        traps.deliver_events(vcpu)
        if not vcpu.rip_written:
            vcpu.rw(X.UC_X86_REG_RIP, rip)


@hypercall(13)
def multicall(vcpu, call_list: int, nr_calls: int, *_) -> int | None:
    """common/multicall.c do_multicall() with pv_do_multicall_call(): an iret ends the
    batch (its result is the multicall's); a debug Xen fills each done entry with 0xAA
    before writing its result back."""
    if getattr(vcpu, "in_multicall", False):
        vcpu.machine.console.printk(
            f"common/multicall.c:47:{vcpu.name} Multicall reentry is disallowed.\n"
        )
        return -EINVAL
    vcpu.in_multicall = True
    try:
        rc = 0
        for i in range(nr_calls):
            va = call_list + 64 * i
            try:
                op, _result, *args = struct.unpack("<8Q", guest.read(vcpu, va, 64))
            except GuestFault:
                return -EFAULT
            if op == 23:
                result = traps.do_iret(vcpu)
                if result is None:
                    return None
            else:
                fn = HANDLERS.get(op)
                result = fn(vcpu, *args[:5]) if fn is not None else -ENOSYS
                if result is None:
                    return None
            result &= MASK64
            try:
                if vcpu.machine.debug_build:
                    guest.write(vcpu, va, b"\xaa" * 64)
                guest.write(vcpu, va + 8, struct.pack("<Q", result))
            except GuestFault:
                if op != 23:
                    return -EFAULT
            if op == 23:
                return result - (1 << 64) if result >> 63 else result
            if not vcpu.kernel_mode and i + 1 < nr_calls:
                # mc_preempt: a continuation re-executes the syscall for the rest.
                vcpu.rw(X.UC_X86_REG_RAX, 13)
                vcpu.rw(X.UC_X86_REG_RDI, call_list + 64 * (i + 1))
                vcpu.rw(X.UC_X86_REG_RSI, nr_calls - i - 1)
                vcpu.rip_written = True  # RIP stays on the syscall (vcpu._on_syscall)
                return None
        return rc
    finally:
        vcpu.in_multicall = False


# ---- traps, callbacks, stacks, segments --------------------------------------------------------


@hypercall(0)
def set_trap_table(vcpu, traps_va: int, *_) -> int:
    """pv/callback.c:340-383: entries until address 0; NULL clears all."""
    if traps_va == 0:
        vcpu.trap_ctxt.clear()
        return 0
    for i in range(256):
        try:
            vec, flags, cs, addr = struct.unpack(
                "<BBHxxxxQ", guest.read(vcpu, traps_va + 16 * i, 16)
            )
        except GuestFault:
            return -EFAULT
        if addr == 0:
            break
        if not canonical(addr):
            return -EINVAL
        vcpu.trap_ctxt[vec] = (flags, cs | 3, addr)
    return 0


@hypercall(30)
def callback_op(vcpu, cmd: int, arg: int, *_) -> int:
    """pv/callback.c:51-168: CALLBACKOP_register (0) / unregister (1)."""
    if cmd == 0:
        try:
            ctype, flags, addr = struct.unpack("<HHxxxxQ", guest.read(vcpu, arg, 16))
        except GuestFault:
            return -EFAULT
        if not canonical(addr):
            return -EINVAL
        if ctype not in (0, 1, 2, 4, 5, 7):
            return -ENOSYS
        vcpu.callbacks[ctype] = (addr, flags)
        return 0
    if cmd == 1:
        try:
            (ctype,) = struct.unpack("<H", guest.read(vcpu, arg, 2))
        except GuestFault:
            return -EFAULT
        if ctype != 4:
            return -EINVAL
        vcpu.callbacks.pop(ctype, None)
        return 0
    return -ENOSYS


@hypercall(3)
def stack_switch(vcpu, ss: int, sp: int, *_) -> int:
    vcpu.kernel_ss, vcpu.kernel_sp = ss | 3, sp
    return 0


@hypercall(5)
def fpu_taskswitch(vcpu, set_: int, *_) -> int:
    vcpu.vcr0 = vcpu.vcr0 | 0x8 if set_ else vcpu.vcr0 & ~0x8
    return 0


@hypercall(25)
def set_segment_base(vcpu, which: int, base: int, *_) -> int:
    if which in (0, 1, 2) and not canonical(base):
        return -EINVAL
    if which == 0:
        vcpu.rw(X.UC_X86_REG_FS_BASE, base)
    elif which == 1:  # SEGBASE_GS_USER
        if vcpu.kernel_mode:
            vcpu.gs_base_user = base
        else:
            vcpu.rw(X.UC_X86_REG_GS_BASE, base)
    elif which == 2:
        if vcpu.kernel_mode:
            vcpu.rw(X.UC_X86_REG_GS_BASE, base)
        else:
            vcpu.gs_base_user = base
    else:
        return -EINVAL
    return 0


@hypercall(23)
def iret(vcpu, *_) -> int | None:
    rax = traps.do_iret(vcpu)
    if rax is None:
        return None
    vcpu.rw(X.UC_X86_REG_RAX, rax)
    traps.deliver_events(vcpu)
    return None


XEN_SYSCTL_INTERFACE_VERSION = 0x16  # public/sysctl.h:31
EACCES = 13


@hypercall(35)
def sysctl(vcpu, u_sysctl: int, *_) -> int:
    """do_sysctl() (common/sysctl.c:32-47): the whole xen_sysctl_t copied in, the interface
    version checked, then XSM's XSM_PRIV check, which only the control domain passes; a PV
    domain here never is one (dom0 is the console shell)."""
    try:
        _cmd, version = struct.unpack_from("<II", guest.read(vcpu, u_sysctl, 136))
    except GuestFault:
        return -EFAULT
    if version != XEN_SYSCTL_INTERFACE_VERSION:
        return -EACCES
    return -EPERM


@hypercall(2)
def set_gdt(vcpu, frame_list: int, entries: int, *_) -> int:
    """pv/descriptor-tables.c:73-139: frames must take a PGT_seg_desc_page reference."""
    from emu.mm.page_info import PGT_seg_desc_page

    if entries > 14 * 512:
        return -EINVAL
    nr = (entries + 511) // 512
    try:
        frames = list(struct.unpack(f"<{nr}Q", guest.read(vcpu, frame_list, 8 * nr))) if nr else []
    except GuestFault:
        return -EFAULT
    pvmm = vcpu.machine.pv.mm
    dom = vcpu.domain
    got = []
    for f in frames:
        if pvmm.get_page_and_type(f, PGT_seg_desc_page, dom):
            for g in got:
                pvmm.put_page_and_type(g, dom)
            return -EINVAL
        got.append(f)
    for old in vcpu.gdt_frames:
        pvmm.put_page_and_type(old, dom)
    vcpu.gdt_frames, vcpu.gdt_ents = got, entries
    area = dom.pv.area
    for i in range(14):
        area.set_gdt_frame(vcpu.vcpu_id, i, got[i] if i < len(got) else None)
    vcpu.flush_tlb()
    return 0


@hypercall(21)
def vm_assist(vcpu, cmd: int, type_: int, *_) -> int:
    """common/domain.c:2378-2398 with the PV64 mask (asm/domain.h)."""
    if type_ not in (0, 1, 2, 3, 4, 5, 32):
        return -EINVAL
    if cmd == 0:
        vcpu.domain.vm_assist |= 1 << type_
    elif cmd == 1:
        vcpu.domain.vm_assist &= ~(1 << type_)
    else:
        return -ENOSYS
    return 0


@hypercall(33)
def physdev_op(vcpu, cmd: int, arg: int, *_) -> int:
    if cmd == 6:  # PHYSDEVOP_set_iopl
        try:
            (iopl,) = struct.unpack("<I", guest.read(vcpu, arg, 4))
        except GuestFault:
            return -EFAULT
        if iopl > 3:
            return -EINVAL
        vcpu.iopl = iopl
        return 0
    return -ENOSYS


# ---- misc ------------------------------------------------------------------------------------


XEN_CAPS = "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64 "  # as `xl info`


@hypercall(17)
def xen_version(vcpu, cmd: int, arg: int, *_) -> int:
    """common/kernel.c do_xen_version(); sub-ops beyond those XSM gives every guest
    (xsm/dummy.h:752-777) are -EPERM for a domU."""
    from emu import version as M

    if cmd == 0:  # XENVER_version
        return (M.XEN_MAJOR << 16) | M.XEN_MINOR
    if cmd == 7:  # XENVER_pagesize
        return 4096

    def s(text: str, size: int) -> bytes:
        return text.encode()[: size - 1].ljust(size, b"\0")

    if cmd == 1:  # XENVER_extraversion
        data = s(M.XEN_EXTRA, 16)
    elif cmd == 2:  # XENVER_compile_info
        data = s(M.XEN_COMPILER, 64) + s(M.XEN_COMPILE_BY, 16)
        data += s(M.XEN_COMPILE_DOMAIN, 32) + s(M.XEN_COMPILE_DATE, 32)
    elif cmd == 3:  # XENVER_capabilities
        data = s(XEN_CAPS, 1024)
    elif cmd == 4:  # XENVER_changeset
        data = s(M.XEN_CHANGESET, 64)
    elif cmd == 5:  # XENVER_platform_parameters: virt_start
        data = struct.pack("<Q", mm.HYPERVISOR_VIRT_START)
    elif cmd == 6:  # XENVER_get_features
        try:
            (idx,) = struct.unpack("<I", guest.read(vcpu, arg, 4))
        except GuestFault:
            return -EFAULT
        # writable_page_tables, writable_descriptor_tables, pae_pgdir_above_4gb,
        # mmu_pt_update_preserve_ad, gnttab_map_avail_bits (features.h)
        bits = (1 << 0) | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 7) if idx == 0 else 0
        data = struct.pack("<II", idx, bits)
    elif cmd == 8:  # XENVER_guest_handle
        import uuid

        data = uuid.UUID(vcpu.domain.handle).bytes
    elif cmd == 9:  # XENVER_commandline, denied: xen_deny() (common/kernel.c:736-746)
        data = b"<denied>\0"
    elif cmd in (10, 14):  # build_id, commandline2: privileged only
        return -EPERM
    elif cmd in (11, 12, 13):  # the varbuf forms (common/kernel.c:508-563)
        text = {11: M.XEN_EXTRA, 12: XEN_CAPS, 13: M.XEN_CHANGESET}[cmd].encode()
        if arg == 0:
            return len(text)
        try:
            if len(text) > guest.read_u32(vcpu, arg):
                return -105  # -ENOBUFS
            guest.write(vcpu, arg + 4, text)
        except GuestFault:
            return -EFAULT
        return len(text)
    else:
        return -ENOSYS
    try:
        guest.write(vcpu, arg, data)
    except GuestFault:
        return -EFAULT
    return 0


@hypercall(8)
def set_debugreg(vcpu, reg: int, value: int, *_) -> int:
    return vcpu.debug.set(reg, value)


@hypercall(9)
def get_debugreg(vcpu, reg: int, *_) -> int:
    value = vcpu.debug.get(reg) if 0 <= reg <= 7 else None  # misc-hypercalls.c:21-31
    return -19 if value is None else value  # -ENODEV


@hypercall(10)
def update_descriptor(vcpu, maddr: int, desc: int, *_) -> int:
    from emu.pv.vcpu_op import update_descriptor as upd

    return upd(vcpu, maddr, desc)


@hypercall(24)
def vcpu_op(vcpu, cmd: int, vcpuid: int, arg: int, *_) -> int:
    from emu.pv.vcpu_op import vcpu_op as op

    return op(vcpu, cmd, vcpuid, arg)


@hypercall(15)
def set_timer_op(vcpu, timeout: int, *_) -> int:
    vcpu.wake_at = timeout or None
    return 0


@hypercall(18)
def console_io(vcpu, cmd: int, count: int, buf: int, *_) -> int:
    """drivers/char/console.c:753-870 (domU: write only, as a debug Xen allows)."""
    if cmd != 0:
        return -EPERM if cmd == 1 else -ENOSYS
    count &= 0xFFFFFFFF
    if count > 0x7FFFFFFF:
        return -EINVAL
    try:
        data = guest.read(vcpu, buf, count)
    except GuestFault:
        return -EFAULT
    vcpu.domain.pv.console_io.write(data)
    return 0


@hypercall(20)
def grant_table_op(vcpu, cmd: int, uop: int, count: int, *_) -> int:
    if cmd in (0, 1, 7):  # map / unmap / unmap_and_replace
        from emu.pv.grant_map import grant_map_op

        return grant_map_op(vcpu, cmd, uop, count)
    from emu.pv.grant import grant_table_op as op

    return op(vcpu, cmd, uop, count)


@hypercall(29)
def sched_op(vcpu, cmd: int, arg: int, *_) -> int:
    from emu.pv import event

    return event.sched_op(vcpu, cmd, arg)


@hypercall(32)
def event_channel_op(vcpu, cmd: int, arg: int, *_) -> int:
    from emu.pv import event

    return event.event_channel_op(vcpu, cmd, arg)
