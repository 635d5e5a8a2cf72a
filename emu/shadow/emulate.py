"""Guest writes to write-protected page tables (multi.c: sh_x86_emulate_write, validate).

Instead of decoding the instruction, the faulting write is single-stepped: the shadow L1
entry is made writable for one instruction with RFLAGS.TF set (unicorn.md §3: the
instruction runs and #DB follows at once), then `sh_debug_trap()` write-protects it again,
diffs the page against the snapshot taken before the step and revalidates each changed
entry in every shadow of that frame (`sh_validate_guest_entry()`), then flushes all TLBs.

Revalidation empties the shadow entry instead of propagating the new guest entry eagerly
(as Xen does): the next access faults and is recorded, so the access record stays exact
even for guest entries written with A already set.
"""

from __future__ import annotations

import numpy as np

from emu.shadow import _PAGE_ACCESSED, _PAGE_PRESENT, _PAGE_RW, PADDR_MASK, TYPE_LEVEL

EFLAGS_TF = 0x100
_VALIDATE = {1: "shadow_validate_gl1e_calls", 2: "shadow_validate_gl2e_calls",
             3: "shadow_validate_gl3e_calls", 4: "shadow_validate_gl4e_calls"}  # fmt: skip


def _eflags(uc, value: int | None = None) -> int:
    from unicorn.x86_const import UC_X86_REG_EFLAGS

    if value is None:
        return uc.reg_read(UC_X86_REG_EFLAGS)
    uc.reg_write(UC_X86_REG_EFLAGS, value)
    return value


def begin_step(sd, vcpu, i1: int, gmfn: int) -> None:
    """Let the faulting instruction write through shadow entry `i1` once, under TF."""
    vid = vcpu.vcpu_id
    snapshot = sd.u64[gmfn << 9 : (gmfn + 1) << 9].copy()
    temp = sd.mem[i1] | _PAGE_RW
    sd.mem[i1] = temp  # an upgrade: no flush needed
    sd.steps.setdefault(vid, []).append((i1, temp, gmfn, snapshot))
    if vid not in sd.stepping:
        fl = _eflags(vcpu.uc)
        sd.stepping[vid] = bool(fl & EFLAGS_TF)
        _eflags(vcpu.uc, fl | EFLAGS_TF)


def resolve_steps(sd, vcpu_or_id) -> None:
    """Write-protect again and resync everything this vCPU was allowed to write."""
    vid = getattr(vcpu_or_id, "vcpu_id", vcpu_or_id)
    recs = sd.steps.pop(vid, None)
    if not recs:
        return
    mem = sd.mem
    for i1, temp, _gmfn, _snap in reversed(recs):
        if mem[i1] == temp or mem[i1] == temp | 0x40:  # hardware may have set D
            mem[i1] = mem[i1] & ~_PAGE_RW
    sd.need_flush = True
    seen: set[int] = set()
    for _i1, _temp, gmfn, snap in recs:
        if gmfn not in seen:
            seen.add(gmfn)
            resync(sd, gmfn, snap)
    sd.flush_if_needed()


def resolve_all_steps(sd) -> None:
    for vid in list(sd.steps):
        resolve_steps(sd, vid)


def cancel_step(sd, vcpu) -> None:
    """The instruction will not complete (its fault goes to the guest): undo TF too."""
    vid = vcpu.vcpu_id
    if vid not in sd.stepping:
        return
    resolve_steps(sd, vid)
    guest_tf = sd.stepping.pop(vid)
    if not guest_tf:
        _eflags(vcpu.uc, _eflags(vcpu.uc) & ~EFLAGS_TF)


def sh_debug_trap(sd, vcpu) -> bool:
    """#DB: True if it ends one of our single-steps (then the guest never sees it)."""
    vid = vcpu.vcpu_id
    if vid not in sd.stepping:
        return False
    resolve_steps(sd, vid)
    guest_tf = sd.stepping.pop(vid)
    if not guest_tf:
        _eflags(vcpu.uc, _eflags(vcpu.uc) & ~EFLAGS_TF)
    return not guest_tf  # the guest was single-stepping itself: the #DB is its own too


def resync(sd, gmfn: int, snapshot: np.ndarray) -> None:
    """Revalidate the entries of guest table `gmfn` that differ from `snapshot`."""
    flags = sd.shadow_flags.get(gmfn, 0)
    if not flags:
        return
    page = sd.u64[gmfn << 9 : (gmfn + 1) << 9]
    changed = np.flatnonzero(page != snapshot).tolist()
    if not changed:
        return
    for t in TYPE_LEVEL:
        if flags & (1 << t):
            for i in changed:
                smfn = sd.hash.map.get((gmfn, t))
                if smfn is None:
                    break
                validate_entry(sd, smfn, t, i)


def validate_entry(sd, smfn: int, shadow_type: int, i: int) -> None:
    """sh_validate_guest_entry() for one changed guest entry: empty its shadow entry."""
    level = TYPE_LEVEL[shadow_type]
    sd.cpu[sd.pc.index[_VALIDATE[level]]] += 1
    idx = (smfn << 9) | i
    old = sd.mem[idx]
    if not old & _PAGE_PRESENT:
        return
    sd.mem[idx] = 0
    sd.need_flush = True
    target = (old & PADDR_MASK) >> 12
    if level == 1:
        if old & _PAGE_ACCESSED and target < sd.nr_frames:
            sd.access.mv_window[target] = 1
    elif target in sd.pool.type:
        sd.put_ref(target)
