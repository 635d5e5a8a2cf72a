"""`W` walk shadow pagetables (a key this product adds; docs/contract.md). Args `dN [VADDR]`.

For a 64-bit PV domain (direct paging, no shadow) `W` walks the guest's own tables instead:
keyhandlers/_walk_pv.py.

Without VADDR: every present entry of the shadow tables loaded in the domain's vCPUs' CR3s,
level by level, indented by level:

    (XEN) d1v0 cr3: guest l4 gfn 0x40 mfn 0x1a040, shadow l4 smfn 0x3e1ff
    (XEN)  l4[000] smfn 0x3e1ff -> 0x3e1fe P RW US A D --  (guest l3 gfn 0x41 mfn 0x1a041)
    (XEN)   l3[000] smfn 0x3e1fe -> 0x3e1fd P RW US A D --  (guest l2 gfn 0x42 mfn 0x1a042)
    (XEN)    l2[000] smfn 0x3e1fd -> 0x3e1fc P RW US A D --  (guest l1 gfn 0x43 mfn 0x1a043)
    (XEN)     l1[001] smfn 0x3e1fc -> mfn 0x1a001 gfn 0x1 P -- US A - --
    (XEN)     l1[100-13f] smfn 0x3e1fc x64 -> mfn 0x1a100-0x1a13f gfn 0x100-0x13f P RW US A D NX

Flags are always in the order `P RW US A D NX`, a clear bit printed as dashes. Consecutive
present L1 entries collapse into one `[first-last] xN` line when their machine frames and
M2P gfns both step by one and their flags are equal; entries that all step by the same S
(index, mfn and gfn alike) collapse into `[first-last step S] xN`. A run is exact, never an
approximation. An upper-level entry names the guest table its child shadows (the child's
back-pointer and its gfn by the M2P), or, for an fl1 shadow splintering a guest 2 MiB page,
that page's first gfn. An entry that is not a shadow of this domain (Xen's
own slot, mapped for one instruction at guest entry) is printed and not followed. Pinned
top-level shadows in no vCPU's CR3 are walked after the loaded ones; a lower shadow reached
a second time (two parents) is named with `shown above` instead of being printed again. After
MAX_L1_LINES run lines the rest is counted, not printed; the last line always gives the
totals: present L1 entries, L1 shadows, lines not shown.

With VADDR: the one path for that address through the guest's own tables (from vCPU 0's
guest CR3, read through the P2M) and through the shadow tables (from its shadow CR3), one
line per level side by side (a guest 2 MiB page ends the guest side at l2; the shadow side
goes on through its fl1), then the page each ends at and whether it is the same machine
frame. Everything is read from machine RAM: no A/D bit is set, nothing counts as an access.
"""

from __future__ import annotations

import numpy as np

from emu.access.scan import hold
from emu.mm.p2m import INVALID_M2P_ENTRY
from emu.mm.page import INVALID_MFN, PTE_ADDR_MASK
from emu.shadow.private import TYPE_LEVEL
from emu.shadow.private import SH_type_fl1_64_shadow as FL1_TYPE
from keyhandlers import KeyhandlerError, keyhandler
from keyhandlers import _walk_pv as walk_pv
from keyhandlers.args import parse_domain, parse_int

P, RW, US, A, D, PSE = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
NX = 1 << 63
MAX_L1_LINES = 256
SHIFTS = {4: 39, 3: 30, 2: 21, 1: 12}
_FLAG_MASK = np.uint64(P | RW | US | A | D | NX)


def flags_str(e: int) -> str:
    """`P RW US A D NX` with dashes for clear bits (fixed width)."""
    return " ".join(
        (
            "P" if e & P else "-",
            "RW" if e & RW else "--",
            "US" if e & US else "--",
            "A" if e & A else "-",
            "D" if e & D else "-",
            "NX" if e & NX else "--",
        )
    )


def _gfn_of(machine, mfn: int) -> str:
    if mfn >= machine.ram.nr_frames:
        return "-"
    g = int(machine.m2p[mfn])
    return "-" if g == INVALID_M2P_ENTRY else f"{g:#x}"


def _vcpu0(dom):
    return dom.vcpus[0] if dom.vcpus else None


@keyhandler(
    "W",
    "walk shadow pagetables",
    args="dN [VADDR]",
    pressed="walking shadow pagetables",
)
def walk_shadow_pagetables(machine, out, args: tuple[str, ...]) -> None:
    if not args:
        raise KeyhandlerError("which domain? (usage: W dN [VADDR])")
    if len(args) > 2:
        raise KeyhandlerError("too many arguments (usage: W dN [VADDR])")
    dom = parse_domain(machine, args[0])
    va = None
    if len(args) == 2:
        va = parse_int(args[1], "virtual address")
        top = va >> 47
        if va >= 1 << 64 or top not in (0, 0x1FFFF):
            raise KeyhandlerError(f"non-canonical virtual address {args[1]}")
    sd = dom.paging
    lines: list[str] = []
    if getattr(dom, "pv", None) is not None:  # direct paging: the guest's own tables
        with hold(machine, dom):
            if machine.domains.get(dom.domid) is not dom or dom.is_dying:
                raise KeyhandlerError(f"d{dom.domid} is being destroyed")
            if va is None:
                walk_pv.walk_all(machine, dom, lines, _walk_l1, _Budget(), flags_str)
            else:
                walk_pv.walk_va(machine, dom, va, lines, flags_str)
        for line in lines:
            out(line)
        return
    if sd is None:
        raise KeyhandlerError(f"d{dom.domid} has no shadow pagetables (not a shadowed guest)")
    with hold(machine, dom):
        if sd.dying or machine.domains.get(dom.domid) is not dom:
            raise KeyhandlerError(f"d{dom.domid} is being destroyed")
        if va is None:
            _walk_all(machine, dom, sd, lines)
        else:
            _walk_va(machine, dom, sd, va, lines)
    for line in lines:
        out(line)


# ---- every present entry ---------------------------------------------------------------


class _Budget:
    def __init__(self) -> None:
        self.lines = 0
        self.hidden_lines = 0
        self.l1_entries = 0
        self.l1_tables: set[int] = set()
        self.walked: set[int] = set()  # lower shadows already printed (shared by two parents)


def _walk_all(machine, dom, sd, lines: list[str]) -> None:
    pool = sd.pool
    kinds = {}
    for t in pool.type.values():
        kinds[t] = kinds.get(t, 0) + 1

    names = {t: f"l{lvl}" for t, lvl in TYPE_LEVEL.items()}
    names[FL1_TYPE] = "fl1"
    order = sorted(names, key=lambda t: (-TYPE_LEVEL.get(t, 1), t == FL1_TYPE))
    used = ", ".join(f"{kinds[t]} {names[t]}" for t in order if t in kinds)
    lines.append(
        f"d{dom.domid}: shadow pool {pool.total_pages} pages, {pool.free_pages} free, "
        f"{len(pool.type)} in use{': ' + used if used else ''}"
    )
    tops: dict[int, list[int]] = {}
    for vid, sl4 in sorted(sd.toplevel.items()):
        tops.setdefault(sl4, []).append(vid)
    b = _Budget()
    if not tops:
        lines.append(f"d{dom.domid}: no shadow loaded in any vCPU's CR3")
    for sl4, vids in tops.items():
        names = ", ".join(f"d{dom.domid}v{v}" for v in vids)
        gmfn = pool.back.get(sl4)
        guest = f"guest l4 gfn {_gfn_of(machine, gmfn)} mfn {gmfn:#x}" if gmfn is not None else "?"
        lines.append(f"{names} cr3: {guest}, shadow l4 smfn {sl4:#x}")
        _walk_table(machine, sd, sl4, 4, lines, b)
    for sl4 in [s for s in pool.pinned if s not in tops]:
        gmfn = pool.back.get(sl4)
        lines.append(
            f"d{dom.domid} pinned, in no CR3: guest l4 gfn {_gfn_of(machine, gmfn)} "
            f"mfn {gmfn:#x}, shadow l4 smfn {sl4:#x}"
        )
        _walk_table(machine, sd, sl4, 4, lines, b)
    hidden = f", {b.hidden_lines} l1 lines not shown" if b.hidden_lines else ""
    lines.append(
        f"d{dom.domid}: {b.l1_entries} present l1 entries in {len(b.l1_tables)} l1 "
        f"shadow(s){hidden}"
    )


def _walk_table(machine, sd, smfn: int, level: int, lines: list[str], b: _Budget) -> None:
    u64 = machine.ram.u64
    ents = u64[smfn << 9 : (smfn + 1) << 9]
    pres = np.flatnonzero(ents & np.uint64(P))
    ind = " " * (5 - level)
    if level == 1:
        _walk_l1(machine, smfn, ents, pres, ind, lines, b)
        return
    pool = sd.pool
    for i in pres.tolist():
        e = int(ents[i])
        child = (e & PTE_ADDR_MASK) >> 12
        head = f"{ind}l{level}[{i:03x}] smfn {smfn:#x} -> {child:#x} {flags_str(e)}"
        if pool.type.get(child) is None:
            lines.append(f"{head}  (not a shadow of this domain: Xen's own mapping)")
            continue
        g = pool.back.get(child)
        seen = " shown above" if child in b.walked else ""
        if pool.type.get(child) == FL1_TYPE:  # back-pointer is the gfn of a guest 2 MiB page
            lines.append(f"{head}  (fl1: guest 2 MiB page at gfn {g:#x}{seen})")
        else:
            lines.append(f"{head}  (guest l{level - 1} gfn {_gfn_of(machine, g)} mfn {g:#x}{seen})")
        if not seen:
            b.walked.add(child)
            _walk_table(machine, sd, child, level - 1, lines, b)


def _walk_l1(
    machine, smfn, ents, pres, ind, lines, b: _Budget, tab: str = "smfn", frame: str = "gfn"
) -> None:
    """Present L1 entries as run lines; `tab`/`frame` name the table and the M2P number
    (a PV guest's tables are its own: `mfn` and `pfn`)."""
    if not pres.size:
        return
    b.l1_tables.add(smfn)
    b.l1_entries += int(pres.size)
    e = ents[pres]
    mfn = ((e & np.uint64(PTE_ADDR_MASK)) >> np.uint64(12)).astype(np.int64)
    nr = machine.ram.nr_frames
    ok = mfn < nr
    gfn = np.full(pres.size, -1, dtype=np.int64)
    m2p = machine.m2p[np.where(ok, mfn, 0)]
    valid = ok & (m2p != INVALID_M2P_ENTRY)
    gfn[valid] = m2p[valid].astype(np.int64)
    fl = e & _FLAG_MASK
    # A run continues while index, mfn and gfn all advance by the same step as the pair
    # before (1 for a contiguous run, S for a strided one) and the flags are equal.
    step = np.diff(pres)
    ok = (np.diff(mfn) == step) & (np.diff(gfn) == step) & (gfn[1:] >= 0) & (gfn[:-1] >= 0)
    ok &= fl[1:] == fl[:-1]
    brk = ~ok
    brk[1:] |= step[1:] != step[:-1]
    starts = np.concatenate(([0], np.flatnonzero(brk) + 1))
    ends = np.concatenate((starts[1:], [pres.size])) - 1
    for s, t in zip(starts.tolist(), ends.tolist(), strict=True):
        if b.lines >= MAX_L1_LINES:
            b.hidden_lines += 1
            continue
        b.lines += 1
        i0, i1 = int(pres[s]), int(pres[t])
        flags = flags_str(int(e[s]))
        m0 = int(mfn[s])
        if s == t:
            g = "-" if gfn[s] < 0 else f"{int(gfn[s]):#x}"
            lines.append(f"{ind}l1[{i0:03x}] {tab} {smfn:#x} -> mfn {m0:#x} {frame} {g} {flags}")
            continue
        k = int(step[s])
        by = "" if k == 1 else f" step {k}"
        lines.append(
            f"{ind}l1[{i0:03x}-{i1:03x}{by}] {tab} {smfn:#x} x{t - s + 1} -> mfn "
            f"{m0:#x}-{int(mfn[t]):#x} {frame} {int(gfn[s]):#x}-{int(gfn[t]):#x} {flags}"
        )


# ---- one virtual address -----------------------------------------------------------------


def _walk_va(machine, dom, sd, va: int, lines: list[str]) -> None:
    v = _vcpu0(dom)
    vid = v.vcpu_id if v is not None else 0
    gcr3 = sd.guest_cr3.get(vid)  # set by every CR3 load (ShadowDomain.update_cr3)
    sl4 = sd.toplevel.get(vid)
    if gcr3 is None:
        raise KeyhandlerError(f"d{dom.domid}v{vid} has loaded no CR3 yet")
    u64 = machine.ram.u64
    nr = machine.ram.nr_frames
    p2m = dom.p2m
    lines.append(
        f"d{dom.domid}v{vid} va {va:#018x}: guest cr3 {gcr3:#x}, shadow cr3 "
        + (f"{sl4 << 12:#x}" if sl4 is not None else "none")
    )
    lines.append(
        f"lvl idx | {'guest table gfn/mfn':<20} {'entry':<16} {'flags':<14} "
        f"| {'shadow smfn':<11} {'entry':<16} flags"
    )
    gfn = (gcr3 & PTE_ADDR_MASK) >> 12
    g_ok, s_tab, g_big = True, sl4, False
    g_end = s_end = None
    g_why = s_why = ""
    for level in (4, 3, 2, 1):
        i = (va >> SHIFTS[level]) & 511
        gcol = "(in the guest's 2 MiB page above)" if level == 1 and g_big else ""
        if g_ok:
            gm = int(p2m[gfn]) if gfn < len(p2m) else INVALID_MFN
            if gm == INVALID_MFN or gm >= nr:
                g_ok, g_why = False, f"guest table gfn {gfn:#x} not in the P2M"
            else:
                ge = int(u64[(gm << 9) + i])
                gcol = f"{gfn:#x}/{gm:#x}".ljust(20) + f" {ge:016x} {flags_str(ge)}"
                if not ge & P:
                    g_ok, g_why = False, f"guest l{level} entry not present"
                elif level == 2 and ge & PSE:
                    # A 2 MiB page (the shadow splinters it into an fl1): no guest l1.
                    base = ((ge & PTE_ADDR_MASK) >> 12) & ~511  # bit 12 is PAT, not address
                    g_ok, g_end, g_big = False, base + ((va >> 12) & 511), True
                elif level == 3 and ge & PSE:
                    g_ok, g_why = False, "guest l3 1 GiB page (not supported)"
                else:
                    gfn = (ge & PTE_ADDR_MASK) >> 12
                    if level == 1:
                        g_end = gfn
        scol = ""
        if s_tab is not None:
            se = int(u64[(s_tab << 9) + i])
            scol = f"{s_tab:#x}".ljust(11) + f" {se:016x} {flags_str(se)}"
            if not se & P:
                s_tab, s_why = None, f"shadow l{level} entry not present"
            else:
                child = (se & PTE_ADDR_MASK) >> 12
                if level == 1:
                    s_end, s_tab = child, None
                elif sd.pool.type.get(child) is None:
                    s_tab, s_why = None, "shadow entry is not a shadow of this domain"
                else:
                    s_tab = child
        elif sl4 is None:
            s_why = s_why or "no shadow loaded"
        lines.append(f"l{level}  {i:03x} | {gcol:<52} | {scol}".rstrip())
    if g_end is not None:
        gm = int(p2m[g_end]) if g_end < len(p2m) else INVALID_MFN
        gpage = f"gfn {g_end:#x} -> mfn " + (f"{gm:#x}" if gm != INVALID_MFN else "none (hole)")
    else:
        gm, gpage = None, g_why
    spage = f"mfn {s_end:#x} (gfn {_gfn_of(machine, s_end)})" if s_end is not None else s_why
    lines.append(f"page    | {gpage:<52} | {spage}")
    if s_end is not None and gm is not None and gm != INVALID_MFN:
        if s_end == gm:
            lines.append(f"both paths end at machine frame {gm:#x}")
        else:
            lines.append(f"MISMATCH: guest path ends at mfn {gm:#x}, shadow at mfn {s_end:#x}")
    elif s_end is None and gm is not None and gm != INVALID_MFN:
        lines.append(
            f"guest path ends at machine frame {gm:#x}; no present shadow (the next access faults)"
        )
