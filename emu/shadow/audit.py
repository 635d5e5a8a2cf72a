"""Shadow audits (common.c: sh_hash_audit; multi.c: sh_audit_l1_table ... sh_audit_l4_table).

`audit_domain(sd)` returns violations as strings (empty = consistent), vectorised over every
shadow of a type at once. `audit_shadows(machine)` covers every shadowed domain; the
machine audit (`emu/audit.py`, key `O`) includes it.
"""

from __future__ import annotations

import numpy as np

from emu.mm.page import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_NX,
    _PAGE_PRESENT,
    _PAGE_PSE,
    _PAGE_RW,
    INVALID_MFN,
    PTE_ADDR_MASK,
)
from emu.mm.page_info import PGC_shadowed_pt
from emu.shadow.hash import SHADOW_HASH_BUCKETS, sh_hash
from emu.shadow.pool import SH_COUNT_SHIFT, SH_HEAD_SHIFT, SH_PINNED_SHIFT
from emu.shadow.private import (
    LEVEL_TYPE,
    TYPE_LEVEL,
    SH_type_fl1_64_shadow,
    SH_type_max_shadow,
    SH_type_min_shadow,
)

MAX_PER_KIND = 4
_U = np.uint64


def _idx(mfns: np.ndarray) -> np.ndarray:
    return ((np.asarray(mfns, dtype=np.int64)[:, None] << 9) + np.arange(512)).ravel()


def _flag_errors(level: int, g: np.ndarray, s: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """sh_audit_flags() over arrays of (guest, shadow) entries with the shadow present."""
    errs = [
        ((g & _U(_PAGE_PRESENT)) == 0, "shadow is present but guest is not present"),
        ((g & _U(_PAGE_ACCESSED)) == 0, "accessed bit not propagated"),
        (((s & _U(_PAGE_RW)) != 0) & ((g & _U(_PAGE_RW)) == 0), "writable bit not propagated"),
        (((g & _U(_PAGE_NX)) != 0) & ((s & _U(_PAGE_NX)) == 0), "NX bit doesn't match"),
    ]
    if level == 1:
        errs.append(
            (((s & _U(_PAGE_RW)) != 0) & ((g & _U(_PAGE_DIRTY)) == 0), "dirty bit not propagated")
        )
    return errs


def audit_domain(sd) -> list[str]:
    """Every check for one ShadowDomain."""
    out: list[str] = []
    d = sd.dom.domid
    if sd.dying:
        return out
    _audit_pool(sd, d, out)
    _audit_hash(sd, d, out)
    _audit_refcounts(sd, d, out)
    p2m = np.asarray(sd.dom.p2m)
    # Entries made writable for one single-stepped instruction of a vCPU that was stopped
    # before it ran it (the step completes, or is taken back, before anything else uses it).
    lent = np.array([r[0] for recs in sd.steps.values() for r in recs], dtype=np.int64)
    _audit_entries(sd, d, p2m, lent, out)
    _audit_fl1(sd, d, p2m, lent, out)
    return out


def _fail(
    out: list[str], d: int, lvl: int, smfn: int, gmfn: int, i: int, g: int, s: int, why: str
) -> None:
    """One failed entry, worded after multi.c's AUDIT_FAIL."""
    out.append(
        f"d{d}: Shadow 4-on-4 audit failed at level {lvl}, index {i}: "
        f"gl{lvl}mfn = {gmfn:x} sl{lvl}mfn = {smfn:x} gl{lvl}e = {g:016x} "
        f"sl{lvl}e = {s:016x} Error: {why}"
    )


def _audit_pool(sd, d: int, out: list[str]) -> None:
    """The pool's lists and the frame-table encoding of every pool frame."""
    pool = sd.pool
    ft = sd.machine.frames
    frames = np.array(pool.frames, dtype=np.int64)
    if len(set(pool.frames)) != len(pool.frames):
        out.append(f"d{d}: shadow pool lists a frame twice")
    free = np.array(pool.freelist, dtype=np.int64)
    inuse = np.array(sorted(pool.type), dtype=np.int64)
    if len(free) + len(inuse) != len(frames) or not np.array_equal(
        np.sort(np.concatenate([free, inuse])), np.sort(frames)
    ):
        out.append(
            f"d{d}: shadow pool total={len(frames)} but free={len(free)} in use={len(inuse)}"
        )
    if frames.size:
        bad = frames[ft.count_info[frames] != 0]
        if bad.size:
            out.append(f"d{d}: {bad.size} shadow pool frame(s) with count_info != 0: {bad[0]:#x}")
    if free.size:
        bad = free[(ft.type_info[free] != 0) | (ft.v[free] != 0)]
        if bad.size:
            out.append(f"d{d}: {bad.size} free shadow frame(s) not SH_type_none: {bad[0]:#x}")
    if inuse.size:
        want = np.array(
            [
                pool.type[m]
                | ((m in pool.pinned) << SH_PINNED_SHIFT)
                | (1 << SH_HEAD_SHIFT)
                | (pool.count[m] << SH_COUNT_SHIFT)
                for m in inuse.tolist()
            ],
            dtype=np.uint64,
        )
        bad = inuse[ft.type_info[inuse] != want]
        if bad.size:
            out.append(f"d{d}: {bad.size} shadow(s) with wrong u.sh in type_info: {bad[0]:#x}")
        backs = np.array([pool.back[m] for m in inuse.tolist()], dtype=np.uint32)
        bad = inuse[ft.v[inuse] != backs]
        if bad.size:
            out.append(f"d{d}: {bad.size} shadow(s) with wrong back-pointer: {bad[0]:#x}")


def _audit_hash(sd, d: int, out: list[str]) -> None:
    """The hash (sh_hash_audit_bucket) and the guest frames' shadow_flags."""
    pool = sd.pool
    ft = sd.machine.frames
    seen: set[int] = set()
    for b in range(SHADOW_HASH_BUCKETS):
        chain = sd.hash.chain(b)
        if chain != sd.hash.buckets[b]:
            out.append(f"d{d}: hash bucket {b}: next_shadow chain differs from the bucket")
        keys = set()
        for smfn in chain:
            t = pool.type.get(smfn)
            if t is None:
                out.append(f"d{d}: hash bucket {b}: {smfn:#x} is not a shadow")
                continue
            if not SH_type_min_shadow <= t <= SH_type_max_shadow:
                out.append(f"d{d}: hash bucket {b}: {smfn:#x} has bogus type {t}")
            back = pool.back[smfn]
            if sh_hash(back, t) != b:
                out.append(f"d{d}: hash bucket {b}: {smfn:#x} is in the wrong bucket")
            if (back, t) in keys:
                out.append(f"d{d}: hash bucket {b}: duplicate shadow of {back:#x} type {t}")
            keys.add((back, t))
            seen.add(smfn)
            if t == SH_type_fl1_64_shadow:
                continue  # back-pointer is a gfn: no guest page to check
            if not int(ft.tlbflush[back]) & (1 << t):
                out.append(f"d{d}: guest mfn {back:#x} lacks shadow_flags bit {t}")
            if not int(ft.count_info[back]) & PGC_shadowed_pt:
                out.append(f"d{d}: guest mfn {back:#x} shadowed but not PGC_shadowed_pt")
    missing = set(pool.type) - seen - sd.orphans
    if missing:
        out.append(f"d{d}: {len(missing)} shadow(s) not in the hash: {min(missing):#x}")
    for gmfn, f in sd.shadow_flags.items():
        if int(ft.tlbflush[gmfn]) != f:
            out.append(
                f"d{d}: guest mfn {gmfn:#x} shadow_flags {int(ft.tlbflush[gmfn]):#x}!={f:#x}"
            )
        for t in TYPE_LEVEL:
            if f & (1 << t) and (gmfn, t) not in sd.hash.map:
                out.append(f"d{d}: guest mfn {gmfn:#x} flags type {t} with no such shadow")


def _audit_refcounts(sd, d: int, out: list[str]) -> None:
    """Each shadow's count: entries pointing at it + pins + CR3 references."""
    pool = sd.pool
    u64 = sd.u64
    refs: dict[int, int] = {}
    for t in (LEVEL_TYPE[2], LEVEL_TYPE[3], LEVEL_TYPE[4]):
        sm = pool.in_use_of_type(t)
        if sm.size:
            e = u64[_idx(sm)]
            tgt = ((e[(e & _U(_PAGE_PRESENT)) != 0] & _U(PTE_ADDR_MASK)) >> _U(12)).astype(np.int64)
            for m, c in zip(*np.unique(tgt, return_counts=True), strict=True):
                refs[int(m)] = refs.get(int(m), 0) + int(c)
    for m in pool.pinned:
        refs[m] = refs.get(m, 0) + 1
    for m in sd.toplevel.values():
        refs[m] = refs.get(m, 0) + 1
    for m, c in pool.count.items():
        if refs.get(m, 0) != c:
            out.append(f"d{d}: shadow {m:#x} count {c} but {refs.get(m, 0)} references")
    stray = set(refs) - set(pool.count)
    if stray:
        out.append(f"d{d}: {len(stray)} shadow entries point at non-shadows: {min(stray):#x}")


def _audit_entries(sd, d: int, p2m: np.ndarray, lent: np.ndarray, out: list[str]) -> None:
    """Shadow entries against guest entries and the P2M (sh_audit_l1_table ..
    sh_audit_l4_table), vectorised over every shadow of a level."""
    pool = sd.pool
    u64 = sd.u64
    for lvl in (1, 2, 3, 4):
        t = LEVEL_TYPE[lvl]
        sm = pool.in_use_of_type(t)
        if sd.orphans:
            sm = sm[~np.isin(sm, np.fromiter(sd.orphans, np.int64, len(sd.orphans)))]
        if not sm.size:
            continue
        gm = np.array([pool.back[m] for m in sm.tolist()], dtype=np.int64)
        si, gi = _idx(sm), _idx(gm)
        s, g = u64[si], u64[gi]
        pres = (s & _U(_PAGE_PRESENT)) != 0
        s, g, where = s[pres], g[pres], np.flatnonzero(pres)
        checks = _flag_errors(lvl, g, s)
        gfn = ((g & _U(PTE_ADDR_MASK)) >> _U(12)).astype(np.int64)
        inr = gfn < p2m.size
        want_mfn = np.full(gfn.size, INVALID_MFN, dtype=np.uint64)
        want_mfn[inr] = p2m[gfn[inr]]
        tgt = (s & _U(PTE_ADDR_MASK)) >> _U(12)
        if lvl == 1:
            checks.append((tgt != want_mfn, "bad translation"))
            isp = np.isin(tgt, np.fromiter(sd.shadow_flags, np.uint64, len(sd.shadow_flags)))
            isp &= ~np.isin(si[where], lent)  # lent for a pending single-step (emulate.py)
            checks.append((isp & ((s & _U(_PAGE_RW)) != 0), "writable mapping of a page table"))
        else:
            # The child must be the shadow of the frame the guest entry points at, or for a
            # guest 2 MiB entry the fl1 of that superpage's first gfn.
            ct = LEVEL_TYPE[lvl - 1]
            pse = (g & _U(_PAGE_PSE)) != 0 if lvl == 2 else np.zeros(g.size, bool)
            want_t = np.where(pse, SH_type_fl1_64_shadow, ct)
            want_back = np.where(pse, (g & _U(PTE_ADDR_MASK & ~0x1FFFFF)) >> _U(12), want_mfn)
            child_back = np.array(
                [
                    pool.back.get(int(x), -1) if pool.type.get(int(x)) == int(wt) else -1
                    for x, wt in zip(tgt, want_t, strict=True)
                ],
                dtype=np.int64,
            )
            checks.append((child_back.astype(np.uint64) != want_back, "bad translation"))
        for mask, why in checks:
            hit = np.flatnonzero(mask)
            for k in hit[:MAX_PER_KIND].tolist():
                w = int(where[k])
                sm_, gm_ = int(sm[w >> 9]), int(gm[w >> 9])
                _fail(out, d, lvl, sm_, gm_, w & 511, int(g[k]), int(s[k]), why)
            if hit.size > MAX_PER_KIND:
                out.append(f"d{d}: ... {hit.size - MAX_PER_KIND} more at level {lvl}: {why}")


def _audit_fl1(sd, d: int, p2m: np.ndarray, lent: np.ndarray, out: list[str]) -> None:
    """fl1 shadows (sh_audit_fl1_table): entry i maps gfn back + i."""
    pool = sd.pool
    u64 = sd.u64
    sm = pool.in_use_of_type(SH_type_fl1_64_shadow)
    for smfn in sm.tolist():
        s = u64[smfn << 9 : (smfn + 1) << 9]
        pres = np.flatnonzero(s & _U(_PAGE_PRESENT))
        if not pres.size:
            continue
        gfns = pool.back[smfn] + pres
        want = np.full(pres.size, INVALID_MFN, dtype=np.uint64)
        inr = gfns < p2m.size
        want[inr] = p2m[gfns[inr]]
        tgt = (s[pres] & _U(PTE_ADDR_MASK)) >> _U(12)
        isp = np.isin(tgt, np.fromiter(sd.shadow_flags, np.uint64, len(sd.shadow_flags)))
        isp &= ~np.isin((smfn << 9) + pres, lent)
        for mask, why in (
            (tgt != want, "bad translation"),
            (isp & ((s[pres] & _U(_PAGE_RW)) != 0), "writable mapping of a page table"),
        ):
            for k in np.flatnonzero(mask)[:MAX_PER_KIND].tolist():
                out.append(
                    f"d{d}: Shadow 4-on-4 audit failed at level 1 gfn = {pool.back[smfn]:x} "
                    f"sl1mfn = {smfn:x} index {int(pres[k])} Error: {why}"
                )


def audit_shadows(machine) -> list[str]:
    """Shadow audit of every shadowed domain."""
    out: list[str] = []
    for dom in list(machine.domains.values()):
        if dom.paging is not None:
            out.extend(audit_domain(dom.paging))
    return out
