"""The PV MMU hypercalls (xen/arch/x86/mm.c): update_va_mapping, mmuext_op, mmu_update,
and new_guest_cr3 / NEW_USER_BASEPTR (`new_baseptr`). They register in emu/pv/hypercall.py's
table; the page-type rules they apply are emu/pv/mm.py's.
"""

from __future__ import annotations

import struct

from emu.pv import guest, mm
from emu.pv.guest import GuestFault
from emu.pv.hcall_table import DOMID_SELF, canonical, hypercall
from emu.pv.mm import EFAULT, EINVAL, ENOSYS, ESRCH


@hypercall(14)
def update_va_mapping(vcpu, va: int, val: int, flags: int, *_) -> int:
    """mm.c:4470-4569: the L1 entry mapping `va` in the current page tables."""
    u64 = vcpu.machine.ram.u64
    nr = vcpu.machine.ram.nr_frames
    if not canonical(va) or mm.HYPERVISOR_VIRT_START <= va < mm.HYPERVISOR_VIRT_END:
        return -EINVAL
    t = vcpu.cr3_mfn()
    for shift in (39, 30, 21):
        e = int(u64[(t << 9) + ((va >> shift) & 511)])
        if not e & mm._PAGE_PRESENT or (shift == 21 and e & mm._PAGE_PSE):
            return -EINVAL
        t = (e & mm.ADDR_MASK) >> 12
        if t >= nr:
            return -EINVAL
    ft = vcpu.machine.frames
    from emu.mm.page_info import PGT_l1_page_table, PGT_type_mask

    if int(ft.type_info[t]) & PGT_type_mask != PGT_l1_page_table or not vcpu.machine.pv.mm.owned(
        t, vcpu.domain
    ):
        return -EINVAL
    rc = vcpu.machine.pv.mm.mod_entry(t, (va >> 12) & 511, val, 1, vcpu.domain)
    if rc:
        return rc
    _flush(vcpu, flags & 3, va, flags & ~3)
    return 0


def _flush(vcpu, kind: int, va: int, which: int) -> None:
    """UVMF_TLB_FLUSH / UVMF_INVLPG, local or all (Unicorn has no per-page flush here)."""
    if kind == 0:
        return
    if which:  # UVMF_ALL or a vCPU mask: every vCPU of the domain
        vcpu.machine.pv.flush_domain_tlbs(vcpu.domain)
    else:
        vcpu.flush_tlb()


MMUEXT_PIN = {0: 1, 1: 2, 2: 3, 3: 4}


@hypercall(26)
def mmuext_op(vcpu, uops: int, count: int, pdone: int, foreigndom: int, *_) -> int:
    """mm.c:3500-3990; stops at the first failure, *pdone = operations done."""
    from emu.mm.page_info import PGT_pinned

    pv = vcpu.machine.pv
    pvmm, dom, ft = pv.mm, vcpu.domain, vcpu.machine.frames
    if foreigndom not in (DOMID_SELF, dom.domid):
        return -ESRCH
    done, rc = 0, 0
    for i in range(count & 0xFFFFFFFF):
        try:
            cmd, arg1, arg2 = struct.unpack("<I4xQQ", guest.read(vcpu, uops + 24 * i, 24))
        except GuestFault:
            rc = -EFAULT
            break
        if cmd in MMUEXT_PIN:
            level = MMUEXT_PIN[cmd]
            if not pvmm.get_page(arg1, dom):
                rc = -EINVAL
            elif rc := pvmm.get_page_type(arg1, mm.LEVEL_TYPE[level], dom):
                pvmm.gdprintk(3586, f"Error {rc} while pinning mfn {arg1:05x}", dom)
                pvmm.put_page(arg1)
            elif int(ft.type_info[arg1]) & PGT_pinned:
                pvmm.gdprintk(3598, f"mfn {arg1:05x} already pinned", dom)
                pvmm.put_page_and_type(arg1, dom)
                rc = -EINVAL
            else:
                ft.type_info[arg1] = int(ft.type_info[arg1]) | PGT_pinned
        elif cmd == 4:  # UNPIN_TABLE
            if not pvmm.get_page(arg1, dom):
                pvmm.gdprintk(3642, f"mfn {arg1:05x} bad, or bad owner d{dom.domid}", dom)
                rc = -EINVAL
            elif not int(ft.type_info[arg1]) & PGT_pinned:
                pvmm.put_page(arg1)
                pvmm.gdprintk(3652, f"mfn {arg1:05x} not pinned", dom)
                rc = -EINVAL
            else:
                pvmm.put_page(arg1)
                ft.type_info[arg1] = int(ft.type_info[arg1]) & ~PGT_pinned
                pvmm.put_page_and_type(arg1, dom)
        elif cmd in (5, 15):  # NEW_BASEPTR / NEW_USER_BASEPTR
            rc = new_baseptr(vcpu, arg1, user=cmd == 15)
        elif cmd in (6, 7):  # TLB_FLUSH_LOCAL / INVLPG_LOCAL
            vcpu.flush_tlb()
        elif cmd in (8, 9, 10, 11):  # *_MULTI / *_ALL
            pv.flush_domain_tlbs(dom)
        elif cmd in (12, 18):  # FLUSH_CACHE(_GLOBAL): caches are coherent here
            pass
        elif cmd in (19, 20):
            rc = -95  # -EOPNOTSUPP
        else:
            rc = -ENOSYS
        if rc:
            break
        done += 1
    if pdone:
        try:
            old = guest.read_u32(vcpu, pdone)
            guest.write(vcpu, pdone, struct.pack("<I", (old + done) & 0xFFFFFFFF))
        except GuestFault:
            return -EFAULT
    return rc


def new_baseptr(vcpu, mfn: int, user: bool) -> int:
    pvmm, dom = vcpu.machine.pv.mm, vcpu.domain
    if user and mfn == vcpu.guest_table_user:
        return 0  # mm.c:3704-3705: nothing to do
    if user and mfn == 0:
        old, vcpu.guest_table_user = vcpu.guest_table_user, 0
    else:
        rc = pvmm.get_page_and_type(mfn, mm.LEVEL_TYPE[4], dom)
        if rc:
            if user:
                pvmm.gdprintk(3718, f"Error {rc} installing new mfn {mfn:05x}", dom)
            else:
                pvmm.gdprintk(3358, f"Error while installing new baseptr {mfn:05x}", dom)
            return rc
        if user:
            old, vcpu.guest_table_user = vcpu.guest_table_user, mfn
        else:
            old, vcpu.guest_table = vcpu.guest_table, mfn
    if user != vcpu.kernel_mode:  # the table of the mode the vCPU is in now
        vcpu.load_cr3()
    if old:
        pvmm.put_page_and_type(old, dom)
    return 0


@hypercall(1)
def mmu_update(vcpu, ureqs: int, count: int, pdone: int, foreigndom: int, *_) -> int:
    """mm.c:4000-4280: MMU_NORMAL_PT_UPDATE / PRESERVE_AD, MMU_MACHPHYS_UPDATE."""
    from emu.mm.page_info import PGT_count_mask, PGT_type_mask, PGT_writable_page

    pv = vcpu.machine.pv
    pvmm, dom, ft = pv.mm, vcpu.domain, vcpu.machine.frames
    if foreigndom & 0xFFFF not in (DOMID_SELF, dom.domid):
        return -ESRCH
    done, rc = 0, 0
    for i in range(count & 0xFFFFFFFF):
        try:
            ptr, val = struct.unpack("<QQ", guest.read(vcpu, ureqs + 16 * i, 16))
        except GuestFault:
            rc = -EFAULT
            break
        cmd = ptr & 7
        mfn = ptr >> 12
        if cmd in (0, 2):
            if not pvmm.get_page(mfn, dom):
                pvmm.gdprintk(4121, "Could not get page for normal update", dom)
                rc = -EINVAL
                break
            ti = int(ft.type_info[mfn])
            level = mm.TYPE_LEVEL.get(ti & PGT_type_mask)
            if level is not None and ti & PGT_count_mask:
                rc = pvmm.mod_entry(mfn, (ptr & 0xFFF) >> 3, val, level, dom, preserve_ad=cmd == 2)
            elif pvmm.get_page_type(mfn, PGT_writable_page, dom) == 0:
                vcpu.machine.ram.u64[((ptr & ~7) >> 3)] = val
                pvmm.put_page_type(mfn, dom)
            else:
                rc = -EINVAL
            pvmm.put_page(mfn)
        elif cmd == 1:
            if not pvmm.get_page(mfn, dom):
                pvmm.gdprintk(4245, "Could not get page for mach->phys update", dom)
                rc = -EINVAL
            else:
                vcpu.machine.m2p[mfn] = val
                pvmm.put_page(mfn)
        else:
            rc = -ENOSYS
        if rc:
            break
        done += 1
    if pdone:
        try:
            guest.write(vcpu, pdone, struct.pack("<I", done))
        except GuestFault:
            return -EFAULT
    return rc
