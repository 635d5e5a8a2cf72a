"""Guest writes to write-protected page tables (multi.c: sh_x86_emulate_write, validate).

The common forms (`mov [m], reg|imm`, `xchg [m], reg`, `[lock] cmpxchg [m], reg`; 4 or 8
bytes, aligned, no segment override, guest not single-stepping itself: the PTE updates
kernels use) are emulated as Xen does: the instruction is fetched through the guest's
tables and decoded with capstone, the value written into the guest frame, the entry
revalidated (`sh_validate_guest_entry()`), registers/flags updated and RIP advanced.

Anything else is single-stepped: the shadow L1 entry is made writable for one instruction
with RFLAGS.TF set (docs/design.md: the instruction runs and #DB follows at once), then
`sh_debug_trap()` write-protects it again, diffs the page against the snapshot taken before
the step, revalidates each changed entry in every shadow of that frame and flushes all
TLBs. (While a step is pending, another vCPU of the domain scheduled before the #DB could
write that page through the lent entry; the diff then revalidates its writes too.)

Revalidation empties the shadow entry instead of propagating the new guest entry eagerly
(as Xen does): the next access faults and is recorded, so the access record stays exact
even for guest entries written with A already set.
"""

from __future__ import annotations

import numpy as np

from emu.mm.page import _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, PTE_ADDR_MASK
from emu.shadow.private import TYPE_LEVEL

EFLAGS_TF = 0x100
_cs = None
_UC_REG: dict[int, int] = {}


def _decoder():
    global _cs
    if _cs is None:
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs

        _cs = Cs(CS_ARCH_X86, CS_MODE_64)
        _cs.detail = True
    return _cs


def _uc_reg(cs, reg: int) -> int:
    r = _UC_REG.get(reg)
    if r is None:
        from unicorn import x86_const as X

        r = _UC_REG[reg] = getattr(X, f"UC_X86_REG_{cs.reg_name(reg).upper()}")
    return r


def guest_va_to_mfn(sd, vid: int, va: int) -> int | None:
    """Translate through the guest's own tables (a hypervisor read: no A/D bit set)."""
    gcr3 = sd.guest_cr3.get(vid)
    if gcr3 is None:
        return None
    mem = sd.mem
    table = (gcr3 & PTE_ADDR_MASK) >> 12
    for shift in (39, 30, 21, 12):
        mfn = sd.gfn_to_mfn(table)
        if mfn is None:
            return None
        e = mem[(mfn << 9) | ((va >> shift) & 511)]
        if not e & _PAGE_PRESENT:
            return None
        if shift == 21 and e & _PAGE_PSE:
            return sd.gfn_to_mfn(((e & PTE_ADDR_MASK & ~0x1FFFFF) >> 12) | ((va >> 12) & 511))
        table = (e & PTE_ADDR_MASK) >> 12
    return sd.gfn_to_mfn(table)


def _full_reg(cs, reg: int) -> int:
    """The 64-bit register a 32-bit one lives in (a 32-bit write zero-extends into it)."""
    name = cs.reg_name(reg)
    if name.startswith("e"):
        name = "r" + name[1:]
    elif name.startswith("r") and name.endswith("d"):
        name = name[:-1]
    from unicorn import x86_const as X

    return getattr(X, f"UC_X86_REG_{name.upper()}")


def _cmp_flags(a: int, b: int, size: int) -> int:
    """RFLAGS CF PF AF ZF SF OF of `cmp a, b` (a - b) at `size` bytes."""
    bits = 8 * size
    mask = (1 << bits) - 1
    r = (a - b) & mask
    sign = 1 << (bits - 1)
    f = 0
    if a < b:
        f |= 0x1  # CF
    if bin(r & 0xFF).count("1") % 2 == 0:
        f |= 0x4  # PF
    if (a ^ b ^ r) & 0x10:
        f |= 0x10  # AF
    if r == 0:
        f |= 0x40  # ZF
    if r & sign:
        f |= 0x80  # SF
    if (a ^ b) & (a ^ r) & sign:
        f |= 0x800  # OF
    return f


_ARITH_FLAGS = 0x8D5  # CF PF AF ZF SF OF


def emulate_write(sd, vcpu, va: int, gmfn: int) -> bool:
    """Emulate a store into guest table `gmfn` (x86_emulate's job in Xen): aligned 4/8-byte
    `mov [m], reg|imm`, `xchg [m], reg`, `[lock] cmpxchg [m], reg`. False = single-step."""
    from capstone import x86_const as C
    from unicorn import x86_const as X

    uc = vcpu.uc
    eflags = uc.reg_read(X.UC_X86_REG_EFLAGS)
    if eflags & EFLAGS_TF:
        return False  # the guest is single-stepping itself: let the hardware do it
    rip = uc.reg_read(X.UC_X86_REG_RIP)
    vid = vcpu.vcpu_id
    code = b""
    for page_va in (rip & ~0xFFF, (rip & ~0xFFF) + 0x1000):
        mfn = guest_va_to_mfn(sd, vid, page_va)
        if mfn is None:
            break
        code += sd.machine.ram.read(mfn << 12, 0x1000)
    off = rip & 0xFFF
    code = code[off : off + 15]
    cs = _decoder()
    insn = next(cs.disasm(code, rip, 1), None)
    kinds = (C.X86_INS_MOV, C.X86_INS_XCHG, C.X86_INS_CMPXCHG)
    if insn is None or insn.id not in kinds or len(insn.operands) != 2:
        return False
    ops = list(insn.operands)
    if insn.id == C.X86_INS_XCHG and ops[1].type == C.X86_OP_MEM:
        ops.reverse()  # xchg reg, [m] is the same instruction
    dst, src = ops
    size = dst.size
    if dst.type != C.X86_OP_MEM or size not in (4, 8) or dst.mem.segment:
        return False
    if insn.id != C.X86_INS_MOV and src.type != C.X86_OP_REG:
        return False
    m = dst.mem
    ea = m.disp
    if m.base == C.X86_REG_RIP:
        ea += rip + insn.size
    elif m.base:
        ea += uc.reg_read(_uc_reg(cs, m.base))
    if m.index:
        ea += uc.reg_read(_uc_reg(cs, m.index)) * m.scale
    ea &= (1 << 64) - 1
    if ea != va or va & (size - 1):
        return False  # not the access that faulted, or unaligned: let the CPU do it
    mask = (1 << (8 * size)) - 1
    if src.type == C.X86_OP_REG:
        value = uc.reg_read(_uc_reg(cs, src.reg)) & mask
    elif src.type == C.X86_OP_IMM:
        value = src.imm & mask
    else:
        return False
    maddr = (gmfn << 12) | (va & 0xFFF)
    old = int.from_bytes(sd.machine.ram.read(maddr, size), "little")
    store = True
    if insn.id == C.X86_INS_XCHG:
        uc.reg_write(_full_reg(cs, src.reg) if size == 4 else _uc_reg(cs, src.reg), old)
    elif insn.id == C.X86_INS_CMPXCHG:
        acc = uc.reg_read(X.UC_X86_REG_RAX) & mask
        flags = _cmp_flags(acc, old, size)
        uc.reg_write(X.UC_X86_REG_EFLAGS, (eflags & ~_ARITH_FLAGS) | flags)
        if acc != old:
            store = False
            uc.reg_write(X.UC_X86_REG_RAX, old)  # (32-bit: EAX zero-extends into RAX)
    if store:
        _store(sd, gmfn, va, value, size)
    uc.reg_write(X.UC_X86_REG_RIP, rip + insn.size)
    sd.pt_writes["emulated"] += 1
    if sd.need_flush:
        sd.flush_tlbs()
    return True


def _store(sd, gmfn: int, va: int, value: int, size: int) -> None:
    """Write into a guest table and revalidate the entry in every shadow of it."""
    idx = va & 0xFFF
    i = (gmfn << 9) | (idx >> 3)
    before = sd.mem[i]
    sd.machine.ram.write((gmfn << 12) | idx, value.to_bytes(size, "little"))
    if sd.mem[i] != before:
        flags = sd.shadow_flags.get(gmfn, 0)
        for t in TYPE_LEVEL:
            if flags & (1 << t):
                smfn = sd.hash.map.get((gmfn, t))
                if smfn is not None:
                    validate_entry(sd, smfn, t, idx >> 3)


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
    sd.pt_writes["single-stepped"] += 1
    snapshot = sd.u64[gmfn << 9 : (gmfn + 1) << 9].copy()
    temp = sd.mem[i1] | _PAGE_RW
    sd.mem[i1] = temp  # an upgrade: no flush needed
    sd.steps.setdefault(vid, []).append((i1, temp, gmfn, snapshot))
    if vid not in sd.stepping:
        fl = _eflags(vcpu.uc)
        sd.stepping[vid] = bool(fl & EFLAGS_TF)
        _eflags(vcpu.uc, fl | EFLAGS_TF)


def resolve_steps(sd, vcpu_or_id) -> None:
    """Write-protect again and resync everything this vCPU (or vCPU id) was allowed to write."""
    vid = vcpu_or_id if isinstance(vcpu_or_id, int) else vcpu_or_id.vcpu_id
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


def resolve_other_steps(sd, vid: int) -> None:
    """Another vCPU of the domain runs while one was descheduled between its PT-write fault
    and the #DB: take the lent entry back now (that vCPU's write faults again and is
    stepped again when it resumes; TF is still set)."""
    for other in [v for v in sd.steps if v != vid]:
        resolve_steps(sd, other)


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
    target = (old & PTE_ADDR_MASK) >> 12
    if level == 1:
        sd.access.fold_entry(old)
    elif target in sd.pool.type:
        sd.put_ref(target)
