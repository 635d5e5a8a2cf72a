"""Grant mappings for PV domains: GNTTABOP_map_grant_ref, unmap_grant_ref, unmap_and_replace
(common/grant_table.c map_grant_ref / unmap_common / unmap_common_complete, and
arch/x86/pv/grant_table.c create_grant_pv_mapping / replace_grant_pv_mapping).

A map takes, per operation: one general reference on the granted frame; for a device
mapping a writable type reference unless read-only; for a host mapping, one more general
reference if it is also a device mapping, and a writable type reference unless read-only.
The host mapping is an L1 entry Xen writes itself (P|A|D|NX|_PAGE_GNTTAB, RW unless
read-only), replacing whatever the guest had there; the guest cannot write such an entry
(_PAGE_GNTTAB is refused in guest L1 entries), and dropping one other than by unmap is
reported and answered with #GP (mm.c put_page_from_l1e). The shared entry gets GTF_reading
/ GTF_writing while pinned. Grants to other domains' frames work the same way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emu.mm.page_info import PGT_l1_page_table, PGT_type_mask, PGT_writable_page
from emu.pv import guest, mm
from emu.pv.grant import gnttab_of
from emu.pv.guest import GuestFault

GNTMAP_device_map, GNTMAP_host_map, GNTMAP_readonly = 1, 2, 4
GNTMAP_application_map, GNTMAP_contains_pte = 8, 16
GNTST_okay, GNTST_general_error, GNTST_bad_domain, GNTST_bad_gntref = 0, -1, -2, -3
GNTST_bad_handle, GNTST_bad_dev_addr = -4, -6
GTF_permit_access, GTF_type_mask, GTF_readonly = 1, 3, 1 << 2
GTF_reading, GTF_writing = 1 << 3, 1 << 4
GTF_sub_page, GTF_transitive = 1 << 8, 2
_PAGE_GNTTAB = 1 << 62
PIN_HSTR, PIN_HSTW, PIN_DEVR, PIN_DEVW = 1 << 0, 1 << 8, 1 << 16, 1 << 24
PIN_W_MASK = (0xFF << 8) | (0xFF << 24)


@dataclass
class Active:
    """struct active_grant_entry."""

    pin: int = 0
    domid: int = 0
    mfn: int = 0


@dataclass
class Maptrack:
    """struct grant_mapping."""

    domid: int
    ref: int
    flags: int


def _gd(vcpu, line: int, text: str) -> None:
    vcpu.machine.console.printk(f"common/grant_table.c:{line}:{vcpu.name} {text}\n")


def _status_addr(gt, ref: int) -> tuple[int, int]:
    """(machine address of the entry's status word, of its frame field) for v1/v2."""
    if gt.version == 1:
        base = (gt.shared[ref // 512] << 12) + 8 * (ref % 512)
        return base, base + 4
    base = (gt.shared[ref // 256] << 12) + 16 * (ref % 256)
    return (gt.status[ref // 2048] << 12) + 2 * (ref % 2048), base + 8


def _entry(gt, ref: int, ram) -> tuple[int, int, int]:
    """(flags, domid, frame) of a shared entry."""
    if gt.version == 1:
        base = (gt.shared[ref // 512] << 12) + 8 * (ref % 512)
        return struct.unpack_from("<HHI", ram.mm, base)
    base = (gt.shared[ref // 256] << 12) + 16 * (ref % 256)
    flags, domid = struct.unpack_from("<HH", ram.mm, base)
    (frame,) = struct.unpack_from("<Q", ram.mm, base + 8)
    return flags, domid, frame


def _set_status(gt, ref: int, ram, set_bits: int, clear_bits: int) -> None:
    addr, _ = _status_addr(gt, ref)
    (v,) = struct.unpack_from("<H", ram.mm, addr)
    struct.pack_into("<H", ram.mm, addr, (v | set_bits) & ~clear_bits)


def nr_entries(gt) -> int:
    return len(gt.shared) * (512 if gt.version == 1 else 256)


def _l1_slot(vcpu, addr: int, flags: int) -> int | None:
    """The u64 index of the L1 entry to use: a PTE's machine address (contains_pte) or
    the entry mapping linear `addr` in the current tables (map_guest_l1e)."""
    ram, ft = vcpu.machine.ram, vcpu.machine.frames
    if flags & GNTMAP_contains_pte:
        if addr & 7:
            return None
        l1 = addr >> 12
        idx = (addr & 0xFFF) >> 3
    else:
        t = vcpu.cr3_mfn()
        for shift in (39, 30, 21):
            e = int(ram.u64[(t << 9) + ((addr >> shift) & 511)])
            if not e & 1 or (shift == 21 and e & 0x80):
                return None
            t = (e & mm.ADDR_MASK) >> 12
            if t >= ram.nr_frames:
                return None
        l1, idx = t, (addr >> 12) & 511
    if not vcpu.machine.pv.mm.owned(l1, vcpu.domain):
        return None
    if int(ft.type_info[l1]) & PGT_type_mask != PGT_l1_page_table:
        return None
    return (l1 << 9) + idx


def pte_flags(flags: int) -> int:
    """grant_to_pte_flags() (pv/grant_table.c)."""
    f = 0x1 | 0x20 | 0x40 | _PAGE_GNTTAB | (1 << 63)
    if flags & GNTMAP_application_map:
        f |= 0x4
    if not flags & GNTMAP_readonly:
        f |= 0x2
    return f


def map_one(vcpu, op: bytes) -> bytes:
    """map_grant_ref() for one `struct gnttab_map_grant_ref`; returns the updated struct."""
    host_addr, flags, ref, dom, _st, _h, _dev = struct.unpack("<QIIHhIQ", op)
    m = vcpu.machine
    ld = vcpu.domain
    pvmm = m.pv.mm

    def done(status: int, handle: int = 0, dev: int = 0) -> bytes:
        return struct.pack("<QIIHhIQ", host_addr, flags, ref, dom, status, handle, dev)

    if not flags & (GNTMAP_device_map | GNTMAP_host_map):
        _gd(vcpu, 1032, f"Bad flags in grant map op: {flags:x}")
        return done(-3)
    rd = m.domains.get(ld.domid if dom == 0x7FF0 else dom)
    rgt = gnttab_of(m, rd)
    if rgt is None:
        _gd(vcpu, 1048, f"Could not find domain {dom}")
        return done(GNTST_bad_domain)
    if ref >= nr_entries(rgt):
        _gd(vcpu, 1078, f"Bad ref {ref:#x} for d{rd.domid}")
        return done(GNTST_bad_gntref)
    ro = bool(flags & GNTMAP_readonly)
    incr = (PIN_DEVR if ro else PIN_DEVW) if flags & GNTMAP_device_map else 0
    incr += (PIN_HSTR if ro else PIN_HSTW) if flags & GNTMAP_host_map else 0
    act = rgt.active.setdefault(ref, Active())
    if act.pin and act.domid != ld.domid:
        _gd(vcpu, 1094, f"Bad domain ({act.domid} != {ld.domid}), or risk of counter overflow "
            f"{act.pin:08x}, or subpage 0")  # fmt: skip
        return done(GNTST_general_error)
    if not act.pin or (not ro and not act.pin & PIN_W_MASK):
        eflags, edomid, frame = _entry(rgt, ref, m.ram)
        mask = GTF_type_mask | (0 if ro else GTF_readonly)
        if eflags & mask != GTF_permit_access or edomid != ld.domid:
            if rgt.version == 1:
                _gd(vcpu, 786, f"Bad flags ({eflags:x}) or dom ({edomid}); expected d{ld.domid}")
            else:
                _gd(vcpu, 852, f"Bad flags ({eflags:x}) or dom ({edomid}); expected d{ld.domid}, "
                    f"flags {mask:x}")  # fmt: skip
            return done(GNTST_general_error)
        _set_status(rgt, ref, m.ram, GTF_reading | (0 if ro else GTF_writing), 0)
        if not act.pin:
            if not pvmm.owned(frame, rd):
                _reduce_status(rgt, ref, m.ram, act)
                return done(GNTST_general_error)
            act.domid, act.mfn = ld.domid, frame
    mfn = act.mfn
    # The references this mapping holds (see the module docstring).
    held: list[tuple[str, int]] = []
    ok = pvmm.get_page(mfn, rd, quiet=True)
    if ok:
        held.append(("gen", mfn))
    if ok and flags & GNTMAP_device_map and not ro:
        ok = pvmm.get_page_type(mfn, PGT_writable_page, rd) == 0
        ok and held.append(("type", mfn))
    if ok and flags & GNTMAP_host_map:
        if flags & GNTMAP_device_map:
            ok = pvmm.get_page(mfn, rd, quiet=True)
            ok and held.append(("gen", mfn))
        if ok and not ro:
            ok = pvmm.get_page_type(mfn, PGT_writable_page, rd) == 0
            ok and held.append(("type", mfn))
        if ok:
            slot = _l1_slot(vcpu, host_addr, flags)
            if slot is None:
                if not flags & GNTMAP_contains_pte:
                    vcpu.machine.console.printk(
                        f"arch/x86/pv/grant_table.c:83:{vcpu.name} Could not find L1 PTE for "
                        f"linear address {host_addr:x}\n"
                    )
                _undo(pvmm, held, rd)
                act.pin += 0
                _reduce_status(rgt, ref, m.ram, act)
                return done(GNTST_general_error)
            old = int(m.ram.u64[slot])
            m.ram.u64[slot] = pvmm.adjust((mfn << 12) | pte_flags(flags), 1)
            put_l1e(vcpu, old)
            vcpu.machine.pv.flush_domain_tlbs(ld)
    if not ok:
        _gd(vcpu, 1235, f"Could not pin grant frame {mfn:#05x}")
        _undo(pvmm, held, rd)
        _reduce_status(rgt, ref, m.ram, act)
        return done(GNTST_general_error)
    act.pin += incr
    lgt = ld.pv.gnttab
    handle = next(h for h in range(len(lgt.maptrack) + 1) if lgt.maptrack.get(h) is None)
    lgt.maptrack[handle] = Maptrack(rd.domid, ref, flags)
    return done(GNTST_okay, handle, mfn << 12)


def _undo(pvmm, held, rd) -> None:
    for kind, mfn in reversed(held):
        if kind == "type":
            pvmm.put_page_type(mfn, rd)
        else:
            pvmm.put_page(mfn)


def _reduce_status(gt, ref: int, ram, act: Active) -> None:
    """reduce_status_for_pin(): GTF_writing off without write pins, GTF_reading off without
    any pin."""
    clear = 0
    if not act.pin & PIN_W_MASK:
        clear |= GTF_writing
    if not act.pin:
        clear |= GTF_reading
    _set_status(gt, ref, ram, 0, clear)


def put_l1e(vcpu, e: int) -> None:
    """put_page_from_l1e() for an entry Xen replaced, a grant PTE reported (mm.c:1220-1228)."""
    if e & 1 and e & _PAGE_GNTTAB and not vcpu.domain.is_dying:
        vcpu.machine.pv.warn(
            vcpu, f"Attempt to implicitly unmap d{vcpu.domain.domid}'s grant PTE {e:016x}"
        )
        from emu.pv.traps import inject

        inject(vcpu, 13, 0)
    vcpu.machine.pv.mm.put_page_from_l1e(e, vcpu.domain)


def unmap_one(vcpu, host_addr: int, dev_bus_addr: int, handle: int, new_addr: int) -> int:
    """unmap_common() + unmap_common_complete(); returns the GNTST status."""
    m = vcpu.machine
    ld = vcpu.domain
    lgt = ld.pv.gnttab
    mt = lgt.maptrack.get(handle)
    if mt is None or not mt.flags:
        _gd(vcpu, 1439, f"Zero flags for d{ld.domid} handle {handle:#x}")
        return GNTST_bad_handle
    rd = m.domains.get(mt.domid)
    rgt = gnttab_of(m, rd)
    if rgt is None:
        return GNTST_bad_handle
    act = rgt.active.get(mt.ref, Active())
    flags = mt.flags
    if dev_bus_addr and flags & GNTMAP_device_map and dev_bus_addr != act.mfn << 12:
        _gd(vcpu, 1517, f"Bus address doesn't match gntref ({dev_bus_addr:x} != {act.mfn << 12:x})")
        return GNTST_bad_dev_addr
    done = 0
    if host_addr and flags & GNTMAP_host_map:
        rc = _replace_host(vcpu, host_addr, act.mfn, new_addr, flags)
        if rc:
            return rc
        mt.flags &= ~GNTMAP_host_map
        done |= GNTMAP_host_map
    if dev_bus_addr and flags & GNTMAP_device_map:
        mt.flags &= ~GNTMAP_device_map
        done |= GNTMAP_device_map
    if not mt.flags & (GNTMAP_device_map | GNTMAP_host_map):
        del lgt.maptrack[handle]
    vcpu.machine.pv.flush_domain_tlbs(ld)
    pvmm = m.pv.mm
    ro = bool(flags & GNTMAP_readonly)
    if done & GNTMAP_device_map:
        if ro:
            pvmm.put_page(act.mfn)
        else:
            pvmm.put_page_and_type(act.mfn, rd)
        act.pin -= PIN_DEVR if ro else PIN_DEVW
    if done & GNTMAP_host_map:
        if not ro:
            pvmm.put_page_type(act.mfn, rd)
        pvmm.put_page(act.mfn)
        act.pin -= PIN_HSTR if ro else PIN_HSTW
    if done:
        _reduce_status(rgt, mt.ref, m.ram, act)
    return GNTST_okay


def _replace_host(vcpu, addr: int, mfn: int, new_addr: int, flags: int) -> int:
    """replace_grant_pv_mapping(): the entry must still be this grant's, then it becomes
    empty (or, for unmap_and_replace, the entry stolen from `new_addr`)."""
    ram = vcpu.machine.ram
    gflags = pte_flags(flags)
    gflags |= 0x100 if gflags & 0x4 else (mm._PAGE_GUEST_KERNEL | 0x4)
    nl1e = 0
    if new_addr:
        steal = _l1_slot(vcpu, new_addr, 0)
        if steal is None:
            vcpu.machine.console.printk(
                f"arch/x86/pv/grant_table.c:152:{vcpu.name} Could not find L1 PTE for linear "
                f"{new_addr:x}\n"
            )
            return GNTST_general_error
        nl1e, ram.u64[steal] = int(ram.u64[steal]), 0
    slot = _l1_slot(vcpu, addr, flags)
    if slot is None:
        if nl1e:
            put_l1e(vcpu, nl1e)
        return GNTST_general_error
    old = int(ram.u64[slot])
    if (old & mm.ADDR_MASK) >> 12 != mfn or (old ^ gflags) & 0x3:
        vcpu.machine.console.printk(
            f"arch/x86/pv/grant_table.c:283:{vcpu.name} PTE {old:016x} for {addr:x} doesn't "
            f"match grant ({(mfn << 12) | gflags:016x})\n"
        )
        if nl1e:
            put_l1e(vcpu, nl1e)
        return GNTST_general_error
    ram.u64[slot] = nl1e
    return GNTST_okay


def grant_map_op(vcpu, cmd: int, uop: int, count: int) -> int:
    """GNTTABOP_map_grant_ref (0), unmap_grant_ref (1), unmap_and_replace (7)."""
    try:
        for i in range(count & 0xFFFFFFFF):
            if cmd == 0:
                va = uop + 32 * i
                guest.write(vcpu, va, map_one(vcpu, guest.read(vcpu, va, 32)))
            elif cmd == 1:
                va = uop + 24 * i
                host, dev, handle = struct.unpack("<QQI", guest.read(vcpu, va, 20))
                guest.write(vcpu, va + 20, struct.pack("<h", unmap_one(vcpu, host, dev, handle, 0)))
            else:
                va = uop + 24 * i
                host, new, handle = struct.unpack("<QQI", guest.read(vcpu, va, 20))
                if not host:  # unmap_and_replace needs the host address (grant_table.c)
                    status = GNTST_general_error
                else:
                    status = unmap_one(vcpu, host, 0, handle, new)
                guest.write(vcpu, va + 20, struct.pack("<h", status))
    except GuestFault:
        return -mm.EFAULT
    return 0
