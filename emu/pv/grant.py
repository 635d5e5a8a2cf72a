"""Grant tables for PV domains (common/grant_table.c): the shared frames and the ops guests
use to set them up; mapping and unmapping grants is emu/pv/grant_map.py.

A domain starts with one shared frame at version 1 (INITIAL_NR_GRANT_FRAMES); the builder
seeds entries 0 (console) and 1 (xenstore) for dom0 as xc_dom_gnttab_seed() does. Frames
are Xen-heap pages shared with the domain (freed with it). Every op requires count == 1 and
reports per-op failure in `status` (GNTST_*), with the hypercall returning 0.
"""

from __future__ import annotations

import struct

from emu.pv import guest
from emu.pv.guest import GuestFault
from emu.pv.mm import EFAULT, EINVAL, ENOSYS

GNTST_okay, GNTST_general_error, GNTST_bad_domain = 0, -1, -2
GNTST_permission_denied, GNTST_bad_virt_addr = -8, -5
GTF_permit_access = 1
MAX_GRANT_FRAMES = 64  # libxl's default max_grant_frames
MAX_GRANT_VERSION = 2  # xl's default when Xen supports v2 (libxl_create.c:410-417)
DOMID_SELF = 0x7FF0
EBUSY = 16


class GrantTable:
    def __init__(self, machine, dom) -> None:
        self.machine = machine
        self.dom = dom
        self.version = 1
        self.shared: list[int] = []
        self.status: list[int] = []
        self.active: dict = {}  # ref -> emu/pv/grant_map.py Active (this domain's grants)
        self.maptrack: dict = {}  # handle -> Maptrack (this domain's mappings)
        self.grow(1)

    def _share(self) -> int:
        from emu.domctl import share_xen_page

        mfn = share_xen_page(self.machine, self.dom)
        if mfn is None:
            raise MemoryError("no Xen heap page for a grant frame")
        self.machine.ram.page(mfn)[:] = 0
        return mfn

    def grow(self, nr: int) -> bool:
        if nr > MAX_GRANT_FRAMES:
            return False
        while len(self.shared) < nr:
            self.shared.append(self._share())
        if self.version == 2:
            while len(self.status) < status_frames(len(self.shared)):
                self.status.append(self._share())
        return True

    def _who(self) -> str:
        v = self.machine.pv.current_vcpu(self.dom)
        return v.name if v is not None else "d0v0"

    def _unpopulate_status(self) -> bool:
        """gnttab_unpopulate_status_frames(): refused while the guest still maps one."""
        from emu.mm.page_info import PGC_count_mask

        ft = self.machine.frames
        if any(int(ft.count_info[m]) & PGC_count_mask > 1 for m in self.status):
            return False
        heap = self.machine.heap
        for mfn in self.status:
            self.dom.xenpage_mfns.remove(mfn)
            self.dom.xenheap_pages -= 1
            heap.free_xenheap_pages(mfn, 0)
        self.status.clear()
        return True

    def seed_v1(self, ref: int, domid: int, frame: int) -> None:
        base = self.shared[0] << 12
        self.machine.ram.write(base + 8 * ref, struct.pack("<HHI", GTF_permit_access, domid, frame))

    def set_version(self, version: int) -> int:
        """gnttab_set_version(): entries 0-7 kept across the switch, the rest cleared."""
        if version not in (1, 2):
            return -EINVAL
        if version > MAX_GRANT_VERSION:
            return -ENOSYS
        if version == self.version:
            return 0
        if any(a.pin for r, a in self.active.items() if r >= 8):
            self.machine.console.printk(
                f"common/grant_table.c:3262:{self._who()} tried to change grant table version "
                f"from {self.version} to {version}, but some grant entries still in use\n"
            )
            return -EBUSY
        if self.version == 2 and not self._unpopulate_status():
            return -EBUSY
        ram = self.machine.ram
        base = self.shared[0] << 12
        if self.version == 1:
            kept = [struct.unpack_from("<HHI", ram.mm, base + 8 * i) for i in range(8)]
        else:
            kept = [struct.unpack_from("<HH4xQ", ram.mm, base + 16 * i) for i in range(8)]
        for mfn in self.shared:
            ram.page(mfn)[:] = 0
        self.version = version
        if version == 2:
            self.grow(len(self.shared))
            for i, (flags, domid, frame) in enumerate(kept):
                struct.pack_into("<HH4xQ", ram.mm, base + 16 * i, flags, domid, frame)
        else:
            for i, (flags, domid, frame) in enumerate(kept):
                struct.pack_into("<HHI", ram.mm, base + 8 * i, flags, domid, frame & 0xFFFFFFFF)
        return 0


def gnttab_of(machine, dom):
    """A domain's grant table: a PV domU's own, dom0's (it grants nothing here), else None."""
    if dom is None:
        return None
    pv = getattr(dom, "pv", None)
    if pv is not None:
        return pv.gnttab
    if dom.domid == 0:
        if machine.pv.dom0_gnttab is None:
            machine.pv.dom0_gnttab = GrantTable(machine, dom)
        return machine.pv.dom0_gnttab
    return None


def status_frames(grant_frames: int) -> int:
    """grant_to_status_frames() for v2: 256 entries a frame, 2048 status words a frame."""
    return (grant_frames * 256 + 2047) // 2048


def _self(dom, domid: int) -> bool:
    return domid in (DOMID_SELF, dom.domid)


def grant_table_op(vcpu, cmd: int, uop: int, count: int) -> int:
    gt = vcpu.domain.pv.gnttab
    if cmd in (2, 6, 8, 9) and (count & 0xFFFFFFFF) != 1:
        return -EINVAL
    try:
        if cmd == 2:  # GNTTABOP_setup_table
            dom, nr, flist = struct.unpack("<H2xI8xQ", guest.read(vcpu, uop, 24))
            status = GNTST_okay
            if not _self(vcpu.domain, dom):
                status = GNTST_permission_denied
            elif not gt.grow(nr):
                status = GNTST_general_error
            else:
                for i in range(nr):
                    try:
                        guest.write(vcpu, flist + 8 * i, struct.pack("<Q", gt.shared[i]))
                    except GuestFault:
                        status = GNTST_bad_virt_addr
                        break
            guest.write(vcpu, uop + 8, struct.pack("<h", status))
            return 0
        if cmd == 6:  # GNTTABOP_query_size
            (dom,) = struct.unpack("<H", guest.read(vcpu, uop, 2))
            if not _self(vcpu.domain, dom):
                guest.write(vcpu, uop + 12, struct.pack("<h", GNTST_permission_denied))
                return 0
            guest.write(
                vcpu, uop + 4, struct.pack("<IIh", len(gt.shared), MAX_GRANT_FRAMES, GNTST_okay)
            )
            return 0
        if cmd == 8:  # GNTTABOP_set_version
            (version,) = struct.unpack("<I", guest.read(vcpu, uop, 4))
            rc = gt.set_version(version)
            guest.write(vcpu, uop, struct.pack("<I", gt.version))
            return rc
        if cmd == 9:  # GNTTABOP_get_status_frames
            nr, dom, flist = struct.unpack("<IH2xQ", guest.read(vcpu, uop, 16))
            status = GNTST_okay
            if not _self(vcpu.domain, dom):
                status = GNTST_permission_denied
            elif gt.version < 2 or nr > len(gt.status):
                status = GNTST_general_error
            else:
                for i in range(nr):
                    try:
                        guest.write(vcpu, flist + 8 * i, struct.pack("<Q", gt.status[i]))
                    except GuestFault:
                        status = GNTST_bad_virt_addr
                        break
            guest.write(vcpu, uop + 6, struct.pack("<h", status))
            return 0
    except GuestFault:
        return -EFAULT
    return -ENOSYS
