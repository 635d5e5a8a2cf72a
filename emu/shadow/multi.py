"""The shadow fault path and CR3 loads for 64-bit guests (multi.c, guest_walk.c).

`sh_page_fault()` walks the guest's tables (reading them through the P2M; the hypervisor's
reads are not guest accesses), sets the guest's A bit at every level and D in the leaf on a
write (as `guest_walk_tables()`/`set_ad_bits()` do), builds the shadow chain L4->L3->L2->L1
on demand, then (`_sh_propagate()`, one tail for 4 KiB and 2 MiB guest mappings) records
the access and installs the shadow L1 entry by Xen's `_sh_propagate()` rule:
present only once guest A is set, writable only once guest D is set (and only after a
recorded guest write to that frame, so the access record sees the first write), never
writable for a frame shadowed as a page table, `_PAGE_USER` forced (guests run at CPL 3),
NX on frames the guest has not fetched from (Unicorn re-walks every store to an executable
page, docs/design.md). Upper shadow entries get A|D.

Scalar RAM and P2M accesses go through memoryviews (Python ints): this is the hot path.
"""

from __future__ import annotations

from time import monotonic_ns as _monotonic_ns

from unicorn.x86_const import UC_X86_REG_MSR

from emu.mm.page import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_NX,
    _PAGE_PRESENT,
    _PAGE_PSE,
    _PAGE_RW,
    _PAGE_USER,
    PTE_ADDR_MASK,
)
from emu.shadow.private import (
    CRASH,
    FIXED,
    GUEST_FAULT,
    LEVEL_TYPE,
    PFEC_insn_fetch,
    PFEC_page_present,
    PFEC_reserved_bit,
    PFEC_write_access,
    SH_type_l4_64_shadow,
    ShadowError,
)

P, RW, US, A, D, PSE, NX = (
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_USER,
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PSE,
    _PAGE_NX,
)
ADDR = PTE_ADDR_MASK
SHIFTS = (39, 30, 21, 12)
UPPER = P | US | A | D  # flags every upper-level shadow entry gets
LEAF = P | US | A  # a present shadow L1 entry: _PAGE_USER forced, A copied from the guest
EFER_NXE = 1 << 11
MSR_EFER = 0xC0000080
SPURIOUS_LIMIT = 64  # consecutive no-progress faults on one vCPU before we give up


def _crash(sd, vcpu, msg: str) -> int:
    sd.crash_reason = msg
    sd.machine.console.printk(f"d{sd.dom.domid}v{vcpu.vcpu_id} shadow: {msg}\n")
    return CRASH


def _guest_fault(sd, vcpu, ec: int, present: bool, cpu, ix) -> int:
    """The guest's own tables deny the access: the #PF is the guest's."""
    from emu.shadow.emulate import cancel_step

    cpu[ix["shadow_fault_bail_real_fault"]] += 1
    cancel_step(sd, vcpu)
    # A PV kernel runs at CPL 3 but takes its faults as the kernel: no U bit.
    sd.guest_ec[vcpu.vcpu_id] = (PFEC_page_present if present else 0) | (
        ec & (PFEC_write_access | PFEC_insn_fetch)
    )
    return GUEST_FAULT


def _walk_fail(sd, vcpu, va, ec, lvl, gfn, e, cpu, ix) -> int:
    """The slow exits of the guest walk: bad gfn, not present, superpage."""
    if e is None:
        cpu[ix["shadow_fault_bail_bad_gfn"]] += 1
        return _crash(sd, vcpu, f"BAD gfn={gfn:#x} (level {lvl} table) for va {va:#x}")
    if not e & P:
        return _guest_fault(sd, vcpu, ec, False, cpu, ix)
    # PS in an L4 entry, or in an L3 entry (shadow mode offers no 1 GiB guest pages), or
    # reserved address bits in a 2 MiB entry: a reserved-bit #PF for the guest.
    sd.guest_ec[vcpu.vcpu_id] = PFEC_page_present | PFEC_reserved_bit | (ec & 0x12)
    cpu[ix["shadow_fault_bail_real_fault"]] += 1
    return GUEST_FAULT


def sh_page_fault(sd, vcpu, va: int, ec: int) -> int:
    """sh_page_fault(): FIXED, GUEST_FAULT or CRASH. (Unrolled: this is the hot path.)"""
    pc = sd.pc
    cpu = pc.cpu[vcpu.processor % pc.nr_cpus]
    sd.cpu = cpu
    i_fault, i_walk, _ = sd.hot_counters
    cpu[i_fault] += 1
    vid = vcpu.vcpu_id
    if ec & PFEC_reserved_bit:
        return _crash(sd, vcpu, f"reserved bit fault on shadow entry for va {va:#x}")
    gcr3 = sd.guest_cr3.get(vid)
    sl4 = sd.toplevel.get(vid)
    if gcr3 is None or sl4 is None:
        return _crash(sd, vcpu, "page fault before any CR3 was loaded")
    if sd.orphans and sl4 in sd.orphans:
        return _crash(sd, vcpu, f"top-level page table (cr3 {gcr3:#x}) left the domain")
    if sd.steps and (len(sd.steps) > 1 or vid not in sd.steps):
        from emu.shadow.emulate import resolve_other_steps

        resolve_other_steps(sd, vid)
    mem = sd.mem
    p2m = sd._p2m_mv if sd.dom.p2m is sd._p2m_obj else sd.p2m_view()
    np2m = len(p2m)
    nfr = sd.nr_frames
    write = ec & PFEC_write_access
    fetch = ec & PFEC_insn_fetch
    nxe = sd.nxe.get(vid, True)

    # --- guest walk (guest_walk_tables), one level at a time ---
    cpu[i_walk] += 1
    gfn = (gcr3 & ADDR) >> 12
    m4 = p2m[gfn] if gfn < np2m else nfr
    if m4 >= nfr:
        return _walk_fail(sd, vcpu, va, ec, 4, gfn, None, cpu, pc.index)
    i4 = (m4 << 9) | ((va >> 39) & 511)
    e4 = mem[i4]
    if not e4 & P or e4 & PSE:
        return _walk_fail(sd, vcpu, va, ec, 4, gfn, e4, cpu, pc.index)
    gfn = (e4 & ADDR) >> 12
    m3 = p2m[gfn] if gfn < np2m else nfr
    if m3 >= nfr:
        return _walk_fail(sd, vcpu, va, ec, 3, gfn, None, cpu, pc.index)
    i3 = (m3 << 9) | ((va >> 30) & 511)
    e3 = mem[i3]
    if not e3 & P or e3 & PSE:
        return _walk_fail(sd, vcpu, va, ec, 3, gfn, e3, cpu, pc.index)
    gfn = (e3 & ADDR) >> 12
    m2 = p2m[gfn] if gfn < np2m else nfr
    if m2 >= nfr:
        return _walk_fail(sd, vcpu, va, ec, 2, gfn, None, cpu, pc.index)
    i2 = (m2 << 9) | ((va >> 21) & 511)
    e2 = mem[i2]
    if not e2 & P:
        return _walk_fail(sd, vcpu, va, ec, 2, gfn, e2, cpu, pc.index)
    if e2 & PSE:
        return _superpage_fault(sd, vcpu, va, ec, (i4, i3, i2), (m4, m3, m2), (e4, e3, e2), cpu)
    gfn = (e2 & ADDR) >> 12
    m1 = p2m[gfn] if gfn < np2m else nfr
    if m1 >= nfr:
        return _walk_fail(sd, vcpu, va, ec, 1, gfn, None, cpu, pc.index)
    i1g = (m1 << 9) | ((va >> 12) & 511)
    e1 = mem[i1g]
    if not e1 & P:
        return _walk_fail(sd, vcpu, va, ec, 1, gfn, e1, cpu, pc.index)
    if write and not e4 & e3 & e2 & e1 & RW or fetch and nxe and (e4 | e3 | e2 | e1) & NX:
        return _guest_fault(sd, vcpu, ec, True, cpu, pc.index)
    gfn = (e1 & ADDR) >> 12
    lmfn = p2m[gfn] if gfn < np2m else nfr
    if lmfn >= nfr:
        cpu[pc.index["shadow_fault_bail_bad_gfn"]] += 1
        return _crash(sd, vcpu, f"BAD gfn={gfn:#x} for va {va:#x}")
    # set_ad_bits(): A at every level, D in the leaf on a write
    if not e4 & A:
        e4 |= A
        mem[i4] = e4
    if not e3 & A:
        e3 |= A
        mem[i3] = e3
    if not e2 & A:
        e2 |= A
        mem[i2] = e2
    gl1 = e1 | A | D if write else e1 | A
    if gl1 != e1:
        mem[i1g] = gl1

    # --- shadow chain (shadow_get_and_create_l1e) ---
    e = mem[(sl4 << 9) | ((va >> 39) & 511)]
    sl1 = 0
    if e & P:
        e = mem[(e & ADDR) >> 3 | ((va >> 30) & 511)]
        if e & P:
            e = mem[(e & ADDR) >> 3 | ((va >> 21) & 511)]
            if e & P:
                sl1 = (e & ADDR) >> 12
    if not sl1:
        sl1 = _get_and_create_l1(sd, vid, va, (m4, m3, m2, m1), (e4, e3, e2), nxe)
        if not sl1:
            return _crash(sd, vcpu, "shadow pool exhausted")
    return _sh_propagate(sd, vcpu, va, ec, lmfn, gl1, sl1, nxe, cpu)


def _superpage_fault(sd, vcpu, va: int, ec: int, gi, gm, ge, cpu) -> int:
    """A guest 2 MiB mapping: shadowed by an fl1 ("fake L1") of 4 KiB entries, keyed by
    the superpage's first gfn. Each 4 KiB frame still faults on its own first access, so
    the access record stays exact per frame (the guest sees A/D on its L2 entry)."""
    ix = sd.pc.index
    vid = vcpu.vcpu_id
    mem = sd.mem
    p2m = sd.p2m_view()
    np2m = len(p2m)
    nfr = sd.nr_frames
    write = ec & PFEC_write_access
    fetch = ec & PFEC_insn_fetch
    nxe = sd.nxe.get(vid, True)
    e4, e3, e2 = ge
    if e2 & 0x1FE000:  # address bits 13-20 of a 2 MiB entry are reserved
        return _walk_fail(sd, vcpu, va, ec, 2, 0, e2, cpu, ix)
    if write and not e4 & e3 & e2 & RW or fetch and nxe and (e4 | e3 | e2) & NX:
        return _guest_fault(sd, vcpu, ec, True, cpu, ix)
    base = (e2 & ADDR & ~0x1FFFFF) >> 12
    gfn = base | ((va >> 12) & 511)
    lmfn = p2m[gfn] if gfn < np2m else nfr
    if lmfn >= nfr:
        cpu[ix["shadow_fault_bail_bad_gfn"]] += 1
        return _crash(sd, vcpu, f"BAD gfn={gfn:#x} for va {va:#x}")
    for i, e in zip(gi[:2], ge[:2], strict=True):
        if not e & A:
            mem[i] = e | A
    gl = e2 | A | D if write else e2 | A
    if gl != e2:
        mem[gi[2]] = gl
    sl1 = _get_and_create_l1(sd, vid, va, (*gm, 0), (e4 | A, e3 | A, gl), nxe, base)
    if not sl1:
        return _crash(sd, vcpu, "shadow pool exhausted")
    return _sh_propagate(sd, vcpu, va, ec, lmfn, gl, sl1, nxe, cpu)


def _sh_propagate(sd, vcpu, va: int, ec: int, lmfn: int, gl1: int, sl1: int, nxe: bool, cpu) -> int:
    """The fault tail of both guest mappings (4 KiB: `gl1` is the guest L1e; 2 MiB: the
    guest L2e), A and D already set in `gl1` as the guest now sees them.

    Records the access to `lmfn`, installs the shadow L1 entry in `sl1` by
    `_sh_propagate()`'s rule (+ shadow_set_l1e) and ends the fault: an emulated (or
    single-stepped) page-table write, a spurious fault (flushed, counted towards the
    no-progress limit), or progress. One function call per fault: this is the hot path.
    """
    write = ec & PFEC_write_access
    fetch = ec & PFEC_insn_fetch
    vid = vcpu.vcpu_id
    mem = sd.mem
    ix = sd.pc.index
    # --- the access record: this fault is a guest access to lmfn ---
    if not sd.mv_accessed[lmfn]:
        sd.mv_accessed[lmfn] = 1
        sd.mv_first_touch[lmfn] = (_monotonic_ns() - sd.t0) or 1
    sd.mv_window[lmfn] = 1
    written = sd.mv_written
    if write:
        written[lmfn] = 1

    # --- the leaf (_sh_propagate) ---
    is_pt = lmfn in sd.shadow_flags
    new = (lmfn << 12) | LEAF
    if gl1 & RW and gl1 & D and (write or written[lmfn]) and not is_pt:
        new |= RW
    if nxe:
        if fetch:
            sd.exec_mfns.add(lmfn)
            if gl1 & NX:
                new |= NX
        elif gl1 & NX or lmfn not in sd.exec_mfns:
            new |= NX
    i1 = (sl1 << 9) | ((va >> 12) & 511)
    old = mem[i1]
    if write and is_pt:
        # A write to a guest page table: emulate it, or let this one instruction write
        # and resync after it.
        from emu.shadow.emulate import begin_step, emulate_write

        cpu[ix["shadow_fault_emulate_write"]] += 1
        if old != new:
            mem[i1] = new
        if not emulate_write(sd, vcpu, va, lmfn):
            begin_step(sd, vcpu, i1, lmfn)
        sd.spurious[vid] = 0
    elif old == new:
        # Nothing to fix: a stale TLB entry (another vCPU's fault already fixed it).
        n = sd.spurious.get(vid, 0) + 1
        sd.spurious[vid] = n
        if n > SPURIOUS_LIMIT:
            return _crash(sd, vcpu, f"no progress on shadow fault va {va:#x} ec {ec:#x}")
        vcpu.flush_tlb()
    else:
        mem[i1] = new
        if sd.spurious:
            sd.spurious.pop(vid, None)  # progress: the no-progress count starts again
        if old & P and ((old ^ new) & ADDR or (old & RW and not new & RW) or new & ~old & NX):
            sd.need_flush = True
    if sd.need_flush:
        sd.flush_tlbs()
    cpu[sd.hot_counters[2]] += 1  # shadow_fault_fixed
    if sd.machine.shadow_audit_enable:
        return _audit_tables(sd, vcpu, FIXED)
    return FIXED


def _audit_tables(sd, vcpu, result: int) -> int:
    """shadow_audit_tables() while key `O` has enabled audits: check every shadow of the
    domain (all are 4-on-4: Xen's "current mode's tables"). Xen BUG()s on a failure; here
    the violations are printed and the domain crashes alone."""
    bad = _audit_guest_view(sd, vcpu)
    if not bad:
        return result
    for v in bad[:4]:
        sd.machine.console.printk(f"d{sd.dom.domid}v{vcpu.vcpu_id} shadow audit: {v}\n")
    return _crash(sd, vcpu, f"shadow audit failed ({len(bad)} violation(s))")


def _audit_guest_view(sd, vcpu) -> list[str]:
    """audit_domain() with the vCPU's hypervisor-entry L4 slot (emu/cpu/vcpu.py, mapped in
    its shadow L4 while it enters or leaves Xen) back at its shadow value: like Xen's audit,
    which checks guest slots only."""
    from emu.shadow.audit import audit_domain

    step = getattr(vcpu, "xen_step", None)
    if not step:
        return audit_domain(sd)
    idx, old = step[0], step[1]
    mem = sd.mem
    cur = mem[idx]
    mem[idx] = old
    try:
        return audit_domain(sd)
    finally:
        mem[idx] = cur


def _get_and_create_l1(sd, vid: int, va: int, gm, ge, nxe: bool, fl1_gfn: int = -1) -> int:
    # gm: guest table frames L4..L1; ge: guest entries L4..L2 (the parents of L3..L1);
    # fl1_gfn >= 0: the guest L2 entry maps a 2 MiB page at that gfn (an fl1 shadow)
    """Make sure the shadow L3, L2 and L1 for `va` exist and are hooked; 0 if no memory.

    Preallocates only the missing levels (Xen asks for 3 always; with a tiny pool that
    would evict the code page's chain for every data fault and back again, forever).
    """
    mem = sd.mem
    need = 3
    table = sd.toplevel[vid]
    for shift in (39, 30):
        e = mem[(table << 9) | ((va >> shift) & 511)]
        if not e & P:
            break
        need -= 1
        table = (e & ADDR) >> 12
    if sd.pool.free_pages < need and not sd.prealloc(need):
        return 0
    nxmask = NX if nxe else 0
    parent = sd.toplevel[vid]  # prealloc may have unhooked it, never freed it (CR3 ref)
    for lvl in (1, 2, 3):
        pi = (parent << 9) | ((va >> SHIFTS[lvl - 1]) & 511)
        e = mem[pi]
        if e & P:
            child = (e & ADDR) >> 12
        else:
            if lvl == 3 and fl1_gfn >= 0:
                child = sd.get_fl1_shadow(fl1_gfn)
            else:
                child = sd.get_shadow(gm[lvl], LEVEL_TYPE[4 - lvl])
            g = ge[lvl - 1]
            mem[pi] = (child << 12) | UPPER | (g & RW) | (g & nxmask)
            sd.get_ref(child)
        parent = child
    return parent


def sh_update_cr3(sd, vcpu, guest_cr3: int) -> int:
    """sh_update_cr3()/sh_set_toplevel_shadow(): the machine address of the l4 shadow."""
    from emu.shadow.emulate import resolve_other_steps, resolve_steps

    vid = vcpu.vcpu_id
    sd.cpu = sd.pc.cpu[vcpu.processor % sd.pc.nr_cpus]
    resolve_steps(sd, vcpu)
    resolve_other_steps(sd, vid)
    gfn = (guest_cr3 & ADDR) >> 12
    gmfn = sd.gfn_to_mfn(gfn)
    if gmfn is None:
        raise ShadowError(f"d{sd.dom.domid}v{vid} CR3 {guest_cr3:#x}: gfn {gfn:#x} is not RAM")
    sd.nxe[vid] = bool(vcpu.uc.reg_read(UC_X86_REG_MSR, MSR_EFER) & EFER_NXE)
    sl4 = sd.hash.lookup(gmfn, SH_type_l4_64_shadow, sd.cpu)
    sd.cpu[sd.i_status] += 1  # get_shadow_status() in sh_set_toplevel_shadow (common.c:1985)
    if sl4 is None:
        if not sd.prealloc(1):
            raise ShadowError(f"d{sd.dom.domid}v{vid}: no shadow memory for a top-level table")
        sl4 = sd.get_shadow(gmfn, SH_type_l4_64_shadow)
    sd.pin(sl4)
    old = sd.toplevel.get(vid)
    sd.get_ref(sl4)
    sd.toplevel[vid] = sl4
    sd.guest_cr3[vid] = guest_cr3
    if old is not None:
        sd.put_ref(old)
    sd.flush_if_needed()
    if sd.machine.shadow_audit_enable:
        bad = _audit_guest_view(sd, vcpu)
        if bad:
            raise ShadowError(f"d{sd.dom.domid}v{vid}: shadow audit failed: {bad[0]}")
    return sl4 << 12


def shadow_l1e_index(sd, vid: int, va: int) -> int | None:
    """u64 index of the shadow L1 entry for `va` in the vCPU's shadow, if the chain exists."""
    sl4 = sd.toplevel.get(vid)
    if sl4 is None:
        return None
    mem = sd.mem
    table = sl4
    for shift in (39, 30, 21):
        e = mem[(table << 9) | ((va >> shift) & 511)]
        if not e & P:
            return None
        table = (e & ADDR) >> 12
    return (table << 9) | ((va >> 12) & 511)


def sh_invlpg(sd, vcpu, va: int) -> None:
    """sh_invlpg(): drop the shadow L1 entry for `va` and flush."""
    sd.cpu = sd.pc.cpu[vcpu.processor % sd.pc.nr_cpus]
    sd.cpu[sd.pc.index["shadow_invlpg"]] += 1
    i1 = shadow_l1e_index(sd, vcpu.vcpu_id, va)
    if i1 is not None:
        old = sd.mem[i1]
        if old & P:
            sd.access.fold_entry(old)
            sd.mem[i1] = 0
    sd.flush_tlbs()
