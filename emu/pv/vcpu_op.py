"""VCPUOP_initialise / up / down / is_up (common/domain.c do_vcpu_op, arch/x86/domain.c
arch_set_info_guest for a 64-bit PV vCPU), and HYPERVISOR_update_descriptor with
check_descriptor() (pv/descriptor-tables.c).

`struct vcpu_guest_context` (x86_64) offsets used: flags 512, user_regs 520 (rip 648,
cs 656, rflags 664, rsp 672, ss 680), trap_ctxt 720 (256 x 16), gdt_frames 4832,
gdt_ents 4960, kernel_ss 4968, kernel_sp 4976, ctrlreg 4984, event/failsafe/syscall
callbacks 5112/5120/5128, fs_base 5144, gs_base_kernel 5152, gs_base_user 5160; 5168 bytes.
"""

from __future__ import annotations

import struct

from emu.mm.page_info import PGT_seg_desc_page, PGT_type_mask, PGT_writable_page
from emu.pv import guest, mm
from emu.pv.guest import GuestFault
from emu.pv.mm import EFAULT, EINVAL, ENOSYS

CTX_SIZE = 5168
EEXIST, ENOENT = 17, 2
VGCF_in_kernel, VGCF_online = 1 << 2, 1 << 5
GPR_ORDER = "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi".split()
_SEGMENT_P, _SEGMENT_S, _SEGMENT_DPL, _SEGMENT_TYPE = 1 << 15, 1 << 12, 3 << 13, 0xF00
FIRST_RESERVED_GDT_ENTRY = 7168


def canonical(va: int) -> bool:
    return (va >> 47) in (0, 0x1FFFF)


def check_descriptor(desc: int) -> int | None:
    """check_descriptor() for a 64-bit PV domain: the descriptor as Xen stores it, or None."""
    a, b = desc & 0xFFFFFFFF, desc >> 32
    if not b & _SEGMENT_P:
        return desc
    dpl = max((b >> 13) & 3, 3)  # __fixup_guest_selector(): RPL/DPL 3 for a 64-bit guest
    b = (b & ~_SEGMENT_DPL) | (dpl << 13)
    if b & _SEGMENT_S:
        return a | (b << 32)
    if b & _SEGMENT_TYPE == 0:
        return desc  # the second half of a call gate
    if b & _SEGMENT_TYPE != 0xC00:
        return None
    cs = a >> 16
    if (cs >> 3) >= FIRST_RESERVED_GDT_ENTRY and (cs & ~3) not in (0xE030, 0xE020):
        return None
    b &= ~_SEGMENT_DPL
    a = (a & 0xFFFF) | (((cs & ~3) | dpl) << 16)
    if b & 0xFF:
        return None
    return a | (b << 32)


def update_descriptor(vcpu, maddr: int, desc: int) -> int:
    """do_update_descriptor() (pv/descriptor-tables.c:283-333)."""
    if maddr & 7:
        return -EINVAL
    d = check_descriptor(desc)
    if d is None:
        return -EINVAL
    pvmm, dom = vcpu.machine.pv.mm, vcpu.domain
    mfn = maddr >> 12
    if not pvmm.get_page(mfn, dom):
        return -EINVAL
    ti = int(vcpu.machine.frames.type_info[mfn])
    want = PGT_seg_desc_page if ti & PGT_type_mask == PGT_seg_desc_page else PGT_writable_page
    if pvmm.get_page_type(mfn, want, dom):
        pvmm.put_page(mfn)
        return -EINVAL
    vcpu.machine.ram.write(maddr, struct.pack("<Q", d))
    pvmm.put_page_type(mfn, dom)
    pvmm.put_page(mfn)
    return 0


def vcpu_op(vcpu, cmd: int, vcpuid: int, arg: int) -> int:
    dom = vcpu.domain
    if vcpuid >= len(dom.vcpus):
        return -ENOENT
    v = dom.vcpus[vcpuid]
    if cmd == 0:  # VCPUOP_initialise
        try:
            ctx = guest.read(vcpu, arg, CTX_SIZE)
        except GuestFault:
            return -EFAULT
        if getattr(v, "initialised", False) or v is vcpu or not v.blocked:
            return -EEXIST
        return set_info_guest(v, ctx)
    if cmd == 1:  # VCPUOP_up
        if not getattr(v, "initialised", False):
            return -EINVAL
        if v.down:
            v.down = False
            vcpu.machine.sched.wake(v)
        return 0
    if cmd == 2:  # VCPUOP_down
        v.down = True
        if v is vcpu:
            vcpu.stop(("block",))
        return 0
    if cmd == 3:  # VCPUOP_is_up
        return 0 if v.down or not getattr(v, "initialised", False) else 1
    return -ENOSYS


def set_info_guest(v, ctx: bytes) -> int:
    """arch_set_info_guest() for a vCPU not yet running: checks, then its state."""
    (flags,) = struct.unpack_from("<Q", ctx, 512)
    gprs = dict(zip(GPR_ORDER, struct.unpack_from("<15Q", ctx, 520), strict=True))
    rip, rflags, rsp = struct.unpack_from("<Q", ctx, 648)[0], *struct.unpack_from("<QQ", ctx, 664)
    traps = [struct.unpack_from("<BBHxxxxQ", ctx, 720 + 16 * i) for i in range(256)]
    kernel_ss, kernel_sp = struct.unpack_from("<QQ", ctx, 4968)
    ctrlreg = struct.unpack_from("<8Q", ctx, 4984)
    ev, fs_cb, sys_cb = struct.unpack_from("<3Q", ctx, 5112)
    fs_base, gs_kernel, gs_user = struct.unpack_from("<3Q", ctx, 5144)
    if not all(canonical(x) for x in (rip, ev, fs_cb, sys_cb, fs_base, gs_kernel, gs_user)):
        return -EINVAL
    if any(t[3] and not canonical(t[3]) for t in traps):
        return -EINVAL
    pvmm, dom = v.machine.pv.mm, v.domain
    cr3 = ctrlreg[3] >> 12
    if pvmm.get_page_and_type(cr3, mm.LEVEL_TYPE[4], dom):
        return -EINVAL
    ucr3 = ctrlreg[1] >> 12
    if ucr3 and pvmm.get_page_and_type(ucr3, mm.LEVEL_TYPE[4], dom):
        pvmm.put_page_and_type(cr3, dom)
        return -EINVAL
    v.guest_table, v.guest_table_user = cr3, ucr3
    v.trap_ctxt = {i: (f, cs | 3, a) for i, (_vec, f, cs, a) in enumerate(traps) if a}
    v.kernel_ss, v.kernel_sp = kernel_ss | 3, kernel_sp
    for ctype, addr in ((0, ev), (1, fs_cb), (2, sys_cb)):
        if addr:
            v.callbacks[ctype] = (addr, 0)
    v.gs_base_user = gs_user
    v.initialised = True
    v.down = True  # online only with VCPUOP_up (VGCF_online is for the toolstack)
    v.boot_state = (rip, rsp, gprs, rflags, fs_base, gs_kernel, bool(flags & VGCF_in_kernel))
    area = dom.pv.area
    v.enter(area, rip, rsp, gprs["rsi"], (rflags & 0x3F7FD5) | 0x202)
    for name, value in gprs.items():
        if name != "rsi":
            v.set_reg(name, value)
    v.blocked = True
    return 0
