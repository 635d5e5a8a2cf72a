"""The shadow domain (common.c): refcounts, promote/demote, write access, blow, teardown.

One `ShadowDomain` per shadowed domain (`dom.paging`). Shadow entries live in machine RAM
(the frames of the pool); the Python side keeps the `u.sh` headers (pool.py), the hash
(hash.py) and `shadow_flags` of guest frames, and writes each change to the frame table.
A domain's vCPUs never run in parallel, and callers from other threads hold
`machine.quiesce(dom)`, so there is no locking here (Xen's paging lock).
"""

from __future__ import annotations

import numpy as np

from emu.mm.page import _PAGE_ACCESSED, _PAGE_PRESENT, _PAGE_RW, INVALID_MFN, PTE_ADDR_MASK
from emu.mm.page_info import PGC_shadowed_pt
from emu.shadow.hash import ShadowHash
from emu.shadow.multi import sh_page_fault
from emu.shadow.pool import ShadowPool, default_pool_pages
from emu.shadow.private import (
    LEVEL_TYPE,
    TYPE_LEVEL,
    SH_type_fl1_64_shadow,
    SH_type_l1_64_shadow,
    SH_type_l4_64_shadow,
)

_AR512 = np.arange(512, dtype=np.int64)
_U_P = np.uint64(_PAGE_PRESENT)
_U_RW = np.uint64(_PAGE_RW)
_U_A = np.uint64(_PAGE_ACCESSED)
_U_ADDR = np.uint64(PTE_ADDR_MASK)
_U_12 = np.uint64(12)


def _entries_index(mfns: np.ndarray) -> np.ndarray:
    """u64 indices of every entry of the given table frames."""
    return ((np.asarray(mfns, dtype=np.int64)[:, None] << 9) + _AR512).ravel()


class ShadowDomain:
    """`d->arch.paging.shadow` for one domain, plus the operations on it."""

    def __init__(self, machine, dom, pool_pages: int | None = None) -> None:
        self.machine = machine
        self.dom = dom
        self.pc = machine.perfc
        self.access = machine.access
        ram = machine.ram
        self.u64 = ram.u64
        self.mem = memoryview(ram.mm).cast("Q")  # scalar reads give Python ints, fast
        self.nr_frames = ram.nr_frames
        ft = machine.frames.pi
        self.f_count = ft["count_info"]
        self.f_tlb = ft["tlbflush"]
        self.cpu = self.pc.cpu[0]  # counters of the CPU doing the current operation
        if pool_pages is None:
            pool_pages = default_pool_pages(dom)
        self.pool = ShadowPool(machine, pool_pages, self.pc)
        self.hash = ShadowHash(self.f_tlb, self.pc)
        self.shadow_flags: dict[int, int] = {}  # guest mfn -> SHF_* bits
        self.l1s: set[int] = set()
        self._l1_arr: np.ndarray | None = None
        self.toplevel: dict[int, int] = {}  # vcpu_id -> l4 shadow in its CR3 (holds a ref)
        self.guest_cr3: dict[int, int] = {}
        self.nxe: dict[int, bool] = {}
        self.exec_mfns: set[int] = set()  # frames the guest has fetched from (no NX)
        self.steps: dict[int, list] = {}  # vcpu_id -> single-stepped PT writes (emulate.py)
        self.stepping: dict[int, bool] = {}  # vcpu_id -> TF was set by us (value: guest's TF)
        self.guest_ec: dict[int, int] = {}
        self.spurious: dict[int, int] = {}
        self.orphans: set[int] = set()  # l4 shadows in a CR3 whose guest frame left
        self.pt_writes = {"emulated": 0, "single-stepped": 0}  # guest page-table writes
        self.need_flush = False
        self.dying = False
        self.crash_reason: str | None = None
        self._p2m_obj = None
        self._p2m_mv = None
        # Hot-path handles (multi.py): counter indices, access-record memoryviews, t0.
        ix = self.pc.index
        self.hot_counters = (ix["shadow_fault"], ix["guest_walk"], ix["shadow_fault_fixed"])
        self.i_status = ix["shadow_get_shadow_status"]
        acc = self.access
        self.mv_accessed = acc.mv_accessed
        self.mv_written = acc.mv_written
        self.mv_window = acc.mv_window
        self.mv_first_touch = acc.mv_first_touch
        self.t0 = machine._t0  # machine.now() == monotonic_ns() - _t0
        self.p2m_view()

    # ---- sizes (CONTRACT) ------------------------------------------------------------
    @property
    def total_pages(self) -> int:
        return self.pool.total_pages

    @property
    def free_pages(self) -> int:
        return self.pool.free_pages

    def pool_mfns(self) -> np.ndarray:
        return self.pool.mfns()

    def shadow_l1_mfns(self) -> np.ndarray:
        """Every in-use L1 shadow frame (int64)."""
        if self._l1_arr is None:
            self._l1_arr = np.fromiter(self.l1s, dtype=np.int64, count=len(self.l1s))
        return self._l1_arr

    def shadow_l1_entries(self) -> np.ndarray:
        """A copy of every entry of every L1 shadow (uint64, 512 per frame)."""
        l1 = self.shadow_l1_mfns()
        if not l1.size:
            return np.zeros(0, dtype=np.uint64)
        return self.u64[_entries_index(l1)]

    def p2m_view(self):
        p2m = self.dom.p2m
        if p2m is not self._p2m_obj:
            self._p2m_obj = p2m
            self._p2m_mv = memoryview(np.ascontiguousarray(p2m)).cast("B").cast("Q")
        return self._p2m_mv

    def gfn_to_mfn(self, gfn: int) -> int | None:
        p2m = self.p2m_view()
        if gfn >= len(p2m):
            return None
        mfn = p2m[gfn]
        return None if mfn == INVALID_MFN or mfn >= self.nr_frames else mfn

    # ---- TLBs ------------------------------------------------------------------------
    def flush_tlbs(self) -> None:
        """Flush every vCPU of the domain (after any removed or downgraded shadow entry)."""
        self.need_flush = False
        for v in self.dom.vcpus:
            v.flush_tlb()

    def flush_if_needed(self) -> None:
        if self.need_flush:
            self.flush_tlbs()

    # ---- refcounts (private.h: sh_get_ref / sh_put_ref / sh_pin / sh_unpin) -----------
    def get_ref(self, smfn: int) -> None:
        self.pool.count[smfn] += 1
        self.pool.sync(smfn)

    def put_ref(self, smfn: int) -> None:
        pool = self.pool
        c = pool.count[smfn] - 1
        pool.count[smfn] = c
        if c == 0 and smfn not in pool.pinned:
            self.destroy(smfn)
        else:
            pool.sync(smfn)

    def pin(self, smfn: int) -> None:
        pinned = self.pool.pinned
        if smfn in pinned:
            del pinned[smfn]  # re-pin: becomes the newest
            pinned[smfn] = None
            return
        pinned[smfn] = None
        self.get_ref(smfn)

    def unpin(self, smfn: int) -> None:
        if self.pool.pinned.pop(smfn, 0) is None:
            self.put_ref(smfn)

    # ---- promote / demote (common.c: shadow_promote, shadow_demote) --------------------
    def promote(self, gmfn: int, shadow_type: int) -> None:
        f = self.shadow_flags.get(gmfn, 0)
        if not f:
            self.f_count[gmfn] = int(self.f_count[gmfn]) | PGC_shadowed_pt
            self.remove_write_access(gmfn)
        f |= 1 << shadow_type
        self.shadow_flags[gmfn] = f
        self.f_tlb[gmfn] = f

    def demote(self, gmfn: int, shadow_type: int) -> None:
        f = self.shadow_flags.get(gmfn, 0) & ~(1 << shadow_type)
        if f:
            self.shadow_flags[gmfn] = f
            self.f_tlb[gmfn] = f
        else:
            self.shadow_flags.pop(gmfn, None)
            self.f_tlb[gmfn] = 0
            self.f_count[gmfn] = int(self.f_count[gmfn]) & ~PGC_shadowed_pt

    # ---- make / destroy ----------------------------------------------------------------
    def get_shadow(self, gmfn: int, shadow_type: int) -> int:
        """get_shadow_status() or sh_make_shadow(); the caller preallocated."""
        smfn = self.hash.lookup(gmfn, shadow_type, self.cpu)
        self.cpu[self.i_status] += 1  # shadow_get_shadow_status (shadow/private.h:757)
        if smfn is not None:
            return smfn
        smfn = self.pool.alloc(shadow_type, gmfn, self.cpu)
        self.promote(gmfn, shadow_type)
        self.hash.insert(gmfn, shadow_type, smfn)
        if shadow_type == SH_type_l1_64_shadow:
            self.l1s.add(smfn)
            self._l1_arr = None
        return smfn

    def get_fl1_shadow(self, gfn: int) -> int:
        """An fl1 shadow splintering the guest 2 MiB page at `gfn` (back-pointer: the gfn)."""
        smfn = self.hash.lookup(gfn, SH_type_fl1_64_shadow, self.cpu)
        self.cpu[self.i_status] += 1  # get_fl1_shadow_status() is get_shadow_status()
        if smfn is None:
            smfn = self.pool.alloc(SH_type_fl1_64_shadow, gfn, self.cpu)
            self.hash.insert(gfn, SH_type_fl1_64_shadow, smfn)
            self.l1s.add(smfn)  # its entries map frames like any L1's
            self._l1_arr = None
        return smfn

    def destroy(self, smfn: int) -> None:
        """sh_destroy_shadow(): drop the children's refs, demote, back to the pool."""
        pool = self.pool
        t = pool.type[smfn]
        gmfn = pool.back[smfn]
        base = smfn << 9
        ents = self.u64[base : base + 512]
        if t == SH_type_l1_64_shadow or t == SH_type_fl1_64_shadow:
            self.access.fold_accessed(ents)  # the window loses no access
            self.l1s.discard(smfn)
            self._l1_arr = None
            children = []
        else:
            pres = ents[(ents & _U_P) != 0]
            children = ((pres & _U_ADDR) >> _U_12).tolist()
        ents[:] = 0
        for child in children:
            if child in pool.type:  # (not e.g. Xen's own slot, mapped for one instruction)
                self.put_ref(child)
        if smfn in self.orphans:  # already out of the hash, its guest frame demoted
            self.orphans.discard(smfn)
        else:
            self.hash.delete(gmfn, t, smfn)
            if t != SH_type_fl1_64_shadow:  # an fl1's back-pointer is a gfn, no guest table
                self.demote(gmfn, t)
        pool.free(smfn, self.cpu)
        self.need_flush = True

    def unhook(self, smfn: int) -> None:
        """shadow_unhook_mappings(): empty every guest entry of a (top-level) shadow.

        An entry that is not a shadow of ours (Xen's own slot, mapped by the vCPU code for
        one instruction) is left alone, as Xen leaves its own L4 slots.
        """
        base = smfn << 9
        ents = self.u64[base : base + 512]
        idx = np.flatnonzero(ents & _U_P)
        if not idx.size:
            return
        children = ((ents[idx] & _U_ADDR) >> _U_12).tolist()
        pool_type = self.pool.type
        ours = [i for i, c in zip(idx.tolist(), children, strict=True) if c in pool_type]
        ents[ours] = 0
        self.need_flush = True
        for child in children:
            if child in pool_type:
                self.put_ref(child)

    # ---- pool pressure (common.c: _shadow_prealloc) ----------------------------------
    def prealloc(self, pages: int) -> bool:
        pool = self.pool
        if pool.free_pages >= pages:
            return True
        if self.dying:
            return False
        from emu.shadow.emulate import resolve_all_steps

        resolve_all_steps(self)  # entries lent to a single-step may be about to be freed
        ctr, ix = self.cpu, self.pc.index
        ctr[ix["shadow_prealloc_1"]] += 1
        for smfn in list(pool.pinned):  # oldest pin first
            self.unpin(smfn)
            if pool.free_pages >= pages:
                self.flush_if_needed()
                return True
        ctr[ix["shadow_prealloc_2"]] += 1
        for sl4 in list(self.toplevel.values()):
            self.unhook(sl4)
            if pool.free_pages >= pages:
                self.flush_tlbs()
                return True
        self.machine.console.printk(
            f"Can't pre-allocate {pages} shadow pages!\n"
            f"  shadow pages total = {pool.total_pages}, free = {pool.free_pages}, p2m=0\n"
        )
        self.flush_tlbs()
        return False

    # ---- write access (common.c: sh_remove_write_access) ------------------------------
    def remove_write_access(self, gmfn: int) -> None:
        """Make every shadow mapping of `gmfn` read-only (it is becoming a page table).

        A shadow L1 entry is made writable only for a recorded guest write to its frame,
        so a frame never written by its guest has no writable mapping to look for.
        """
        if gmfn >= self.nr_frames or not self.access.mv_written[gmfn]:
            return
        ctr, ix = self.cpu, self.pc.index
        ctr[ix["shadow_writeable"]] += 1
        l1 = self.shadow_l1_mfns()
        if not l1.size:
            return
        ctr[ix["shadow_writeable_bf"]] += 1
        idx = _entries_index(l1)
        e = self.u64[idx]
        m = (e & (_U_ADDR | _U_P | _U_RW)) == np.uint64((gmfn << 12) | _PAGE_PRESENT | _PAGE_RW)
        if m.any():
            self.u64[idx[m]] = e[m] & ~_U_RW
            ctr[ix["shadow_rm_write_flush_tlb"]] += 1
            self.flush_tlbs()

    # ---- remove mappings / unshadow ---------------------------------------------------
    def remove_all_mappings(self, gfns) -> None:
        """The frames behind `gfns` leave the domain: drop every shadow of or mapping to them."""
        from emu.shadow.emulate import resolve_all_steps

        resolve_all_steps(self)
        p2m = np.asarray(self.dom.p2m)
        gfns = np.asarray(gfns, dtype=np.int64)
        gfns = gfns[(gfns >= 0) & (gfns < p2m.size)]
        mfns = p2m[gfns]
        mfns = mfns[mfns != np.uint64(INVALID_MFN)]
        if not mfns.size:
            return
        ctr, ix = self.cpu, self.pc.index
        ctr[ix["shadow_mappings"]] += 1
        self.exec_mfns.difference_update(mfns.tolist())
        for gmfn in mfns.tolist():
            if gmfn in self.shadow_flags:
                self.remove_shadows(gmfn)
        l1 = self.shadow_l1_mfns()
        if l1.size:
            ctr[ix["shadow_mappings_bf"]] += 1
            idx = _entries_index(l1)
            e = self.u64[idx]
            m = ((e & _U_P) != 0) & np.isin((e & _U_ADDR) >> _U_12, mfns)
            if m.any():
                self.u64[idx[m]] = 0
                self.need_flush = True
        self.flush_if_needed()

    def remove_shadows(self, gmfn: int) -> None:
        """sh_remove_shadows(): unshadow a guest frame, unhooking every parent entry."""
        ctr, ix = self.cpu, self.pc.index
        ctr[ix["shadow_unshadow"]] += 1
        for t in sorted(TYPE_LEVEL, reverse=True):
            smfn = self.hash.map.get((gmfn, t))
            if smfn is None:
                continue
            if t == SH_type_l4_64_shadow:
                if smfn in self.toplevel.values():
                    # In a vCPU's CR3 (the guest gave up its own top-level table): empty
                    # it and cut it from the departing frame; it is freed when that vCPU
                    # loads another CR3, and any fault through it crashes the domain.
                    self.unhook(smfn)
                    self.hash.delete(gmfn, t, smfn)
                    self.demote(gmfn, t)
                    self.orphans.add(smfn)
                self.unpin(smfn)
                continue
            ctr[ix["shadow_unshadow_bf"]] += 1
            parents = self.pool.in_use_of_type(LEVEL_TYPE[TYPE_LEVEL[t] + 1])
            if not parents.size:
                continue
            idx = _entries_index(parents)
            e = self.u64[idx]
            m = (e & (_U_ADDR | _U_P)) == np.uint64((smfn << 12) | _PAGE_PRESENT)
            hits = idx[m]
            if hits.size:
                self.u64[hits] = 0
                self.need_flush = True
                for _ in range(hits.size):
                    if smfn in self.pool.type:
                        self.put_ref(smfn)

    # ---- whole-domain operations ---------------------------------------------------------
    def blow_tables(self) -> None:
        """shadow_blow_tables(): unpin all, unhook the vCPUs' top levels, flush.

        Every shadow goes back to the pool except the top-level shadows loaded in some
        vCPU's CR3 (left empty, as in Xen). Guest tables and their A/D bits are untouched.
        """
        from emu.shadow.emulate import resolve_all_steps

        self.cpu = self.pc.cpu[0]
        resolve_all_steps(self)
        for smfn in list(self.pool.pinned):
            self.unpin(smfn)
        for sl4 in list(self.toplevel.values()):
            self.unhook(sl4)
        self.flush_tlbs()

    def clear_l1_accessed(self) -> None:
        """Key `Z`: clear A in every shadow L1 entry, flush (window bits folded first)."""
        l1 = self.shadow_l1_mfns()
        if l1.size:
            idx = _entries_index(l1)
            # The caller cleared `window` for the domain: these A bits are history.
            self.u64[idx] = self.u64[idx] & ~_U_A
        self.flush_tlbs()

    def teardown(self) -> None:
        """shadow_teardown(): every pool frame back to the heap, guest frames demoted."""
        self.dying = True
        for gmfn in list(self.shadow_flags):
            self.f_tlb[gmfn] = 0
            self.f_count[gmfn] = int(self.f_count[gmfn]) & ~PGC_shadowed_pt
        self.shadow_flags.clear()
        self.hash = ShadowHash(self.f_tlb, self.pc)
        self.l1s.clear()
        self._l1_arr = None
        self.toplevel.clear()
        self.orphans.clear()
        self.steps.clear()
        self.stepping.clear()
        self.pool.release_all()

    # ---- vCPU entry points (multi.c) -------------------------------------------------
    # page_fault(vcpu, va, error_code) -> FIXED | GUEST_FAULT | CRASH (multi.py)
    page_fault = sh_page_fault

    def fault_error_code(self, vcpu) -> int:
        """The error code the guest must see for the last GUEST_FAULT on this vCPU."""
        return self.guest_ec.get(vcpu.vcpu_id, 0)

    def update_cr3(self, vcpu, guest_cr3: int) -> int:
        from emu.shadow.multi import sh_update_cr3

        return sh_update_cr3(self, vcpu, guest_cr3)

    def invlpg(self, vcpu, va: int) -> None:
        from emu.shadow.multi import sh_invlpg

        sh_invlpg(self, vcpu, va)

    def debug_trap(self, vcpu) -> bool:
        from emu.shadow.emulate import sh_debug_trap

        return sh_debug_trap(self, vcpu)

    def audit(self) -> list[str]:
        """The shadow audit of this domain (emu/shadow/audit.py)."""
        from emu.shadow.audit import audit_domain

        return audit_domain(self)


def attach_shadow_hooks(machine) -> None:
    """The domain lifecycle hooks of shadow paging (registered by Machine.__init__)."""
    machine.hooks.p2m_removing.append(lambda dom, gfns: _p2m_removing(machine, dom, gfns))
    machine.hooks.domain_destroying.append(lambda dom: _domain_destroying(machine, dom))


def _p2m_removing(machine, dom, gfns) -> None:
    """The domain's vCPUs out of emu_start: balloon and destroy come from other threads."""
    p2m = np.asarray(dom.p2m)
    gfns = np.asarray(gfns, dtype=np.int64)
    gfns = gfns[(gfns >= 0) & (gfns < p2m.size)]
    with machine.quiesce(dom):
        if dom.paging is not None:
            dom.paging.remove_all_mappings(gfns)
        mfns = p2m[gfns]
        machine.access.clear(mfns[mfns != np.uint64(INVALID_MFN)])


def _domain_destroying(machine, dom) -> None:
    with machine.quiesce(dom):
        if dom.paging is not None:
            dom.paging.teardown()
        p2m = np.asarray(dom.p2m)
        machine.access.clear(p2m[p2m != np.uint64(INVALID_MFN)])


def shadow_enable(machine, dom, pool_pages: int | None = None):
    """Turn shadow mode on for `dom`: take its pool from the heap, set `dom.paging`."""
    if dom.paging is not None:
        return dom.paging
    dom.paging = ShadowDomain(machine, dom, pool_pages)
    return dom.paging
