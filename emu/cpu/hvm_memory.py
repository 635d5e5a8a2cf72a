"""memory_op for HVM guests (xen/common/memory.c do_memory_op, via hvm_memory_op).

What a balloon driver needs, on the guest's own domain (DOMID_SELF or its own id), 4 KiB
extents (extent_order 0):
    XENMEM_decrease_reservation (1)  guest_remove_page() per gfn: the frame goes back to the
                                     heap; a gfn that is a hole ends the call
    XENMEM_populate_physmap (6)      a new frame per gfn, within max_pages; a populated gfn or
                                     an allocation failure ends the call
    XENMEM_current_reservation (3), XENMEM_maximum_reservation (4): tot_pages, max_pages
    XENMEM_add_to_physmap (7)        XENMAPSPACE_shared_info, idx 0: the domain's shared_info
                                     frame at `gpfn` (xenmem_add_to_physmap_one(): a RAM page
                                     there is freed; an older mapping of it is removed)
The result of the reservation ops is the number of extents done. Between batches, when the
scheduler wants the pCPU, the call becomes a continuation with the progress in the
command's upper bits (MEMOP_EXTENT_SHIFT), as do_memory_op() does.
"""

from __future__ import annotations

import struct

import numpy as np

from emu.cpu.hvm_copy import DOMID_SELF, EFAULT, EINVAL, ENOSYS, EPERM, continuation, read
from emu.mm import guestmem
from emu.mm.memory import decrease_reservation, populate_physmap
from emu.mm.p2m import p2m_set_entries
from emu.mm.page import INVALID_MFN

XENMEM_decrease_reservation, XENMEM_current_reservation = 1, 3
XENMEM_maximum_reservation, XENMEM_populate_physmap, XENMEM_add_to_physmap = 4, 6, 7
MEMOP_EXTENT_SHIFT, MEMOP_CMD_MASK = 6, (1 << 6) - 1
XENMAPSPACE_shared_info = 0
BATCH = 512  # extents between preemption checks


def memory_op(vcpu, cmd: int, arg: int) -> int | None:
    op, start = cmd & MEMOP_CMD_MASK, cmd >> MEMOP_EXTENT_SHIFT
    dom = vcpu.domain
    if op in (XENMEM_current_reservation, XENMEM_maximum_reservation):
        try:
            (domid,) = struct.unpack("<H", read(vcpu, arg, 2))
        except guestmem.GuestMemError:
            return -EFAULT
        if domid not in (DOMID_SELF, dom.domid):
            return -EPERM
        return dom.tot_pages if op == XENMEM_current_reservation else dom.max_pages
    if op in (XENMEM_decrease_reservation, XENMEM_populate_physmap):
        return _reservation(vcpu, op, start, arg)
    if op == XENMEM_add_to_physmap:
        return _add_to_physmap(vcpu, arg)
    return -ENOSYS


def _reservation(vcpu, op: int, start: int, arg: int) -> int | None:
    dom, m = vcpu.domain, vcpu.machine
    try:
        ext, nr, order, _flags, domid = struct.unpack("<QQIIH", read(vcpu, arg, 26))
    except guestmem.GuestMemError:
        return -EFAULT
    if domid not in (DOMID_SELF, dom.domid):
        return -EPERM
    if order != 0:
        return -EINVAL  # superpage extents: not modelled here
    done = start
    while done < nr:
        if done > start and vcpu.kicked:
            continuation(vcpu, op | (done << MEMOP_EXTENT_SHIFT), arg)
            return None
        n = min(BATCH, nr - done)
        try:
            raw = read(vcpu, ext + 8 * done, 8 * n)
        except guestmem.GuestMemError:
            return done if done else -EFAULT
        gfns = np.frombuffer(raw, dtype=np.uint64).astype(np.int64)
        fn = _decrease if op == XENMEM_decrease_reservation else _populate
        ok = fn(m, dom, gfns)
        done += ok
        if ok < n:
            break
    return done


def _prefix(mask: np.ndarray) -> int:
    """How many leading entries are True."""
    bad = np.flatnonzero(~mask)
    return int(bad[0]) if len(bad) else len(mask)


def _decrease(m, dom, gfns: np.ndarray) -> int:
    p2m = dom.p2m
    inr = (gfns >= 0) & (gfns < len(p2m))
    mfns = np.where(inr, p2m[np.clip(gfns, 0, max(len(p2m) - 1, 0))], np.uint64(INVALID_MFN))
    ram = (mfns != np.uint64(INVALID_MFN)) & ~np.isin(mfns, dom.xenpage_mfns)
    n = _prefix(ram)
    if n and len(np.unique(gfns[:n])) < n:
        n = 0  # the same gfn twice: the second guest_remove_page() finds a hole
    if n:
        decrease_reservation(m, dom, gfns[:n])
    return n


def _populate(m, dom, gfns: np.ndarray) -> int:
    p2m = dom.p2m
    hole = gfns >= 0
    inside = hole & (gfns < len(p2m))
    hole[inside] = p2m[gfns[inside]] == np.uint64(INVALID_MFN)
    n = _prefix(hole)
    if n and len(np.unique(gfns[:n])) < n:
        n = 0
    n = min(n, max(0, dom.max_pages - dom.tot_pages))  # alloc_domheap_pages() past max_pages
    if n and populate_physmap(m, dom, gfns[:n]) is None:
        return 0  # the heap has no frames left
    return n


def _add_to_physmap(vcpu, arg: int) -> int:
    dom, m = vcpu.domain, vcpu.machine
    try:
        domid, _size, space, idx, gpfn = struct.unpack("<HHIQQ", read(vcpu, arg, 24))
    except guestmem.GuestMemError:
        return -EFAULT
    if domid not in (DOMID_SELF, dom.domid):
        return -EPERM
    if space != XENMAPSPACE_shared_info:
        return -ENOSYS
    if idx != 0 or not dom.xenpage_mfns:
        return -EINVAL
    mfn = dom.xenpage_mfns[0]
    if gpfn >= len(dom.p2m) + (1 << 20):
        return -EINVAL
    dom.ensure_p2m(gpfn + 1)
    prev = int(dom.p2m[gpfn])
    if prev == mfn:
        return 0
    if prev != INVALID_MFN:
        decrease_reservation(m, dom, np.array([gpfn]))  # guest_remove_page(): RAM is freed
    old = np.flatnonzero(dom.p2m == np.uint64(mfn))
    for hook in list(m.hooks.p2m_removing):  # shadows of the old and new slot go
        hook(dom, np.concatenate((old, [gpfn])))
    if len(old):
        dom.p2m[old] = np.uint64(INVALID_MFN)
    p2m_set_entries(m, dom, np.array([gpfn]), np.array([mfn]))
    dom.hvm.shinfo_gfn = gpfn
    return 0
