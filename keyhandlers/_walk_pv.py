"""`W dN [VADDR]` for a 64-bit PV domain: the guest's own page tables (keyhandlers/walk.py).

A PV guest runs on direct paging: there is no shadow, the CPU walks the tables the guest
wrote and Xen validated, and their entries hold machine frames. So `W` walks those: from
each vCPU's CR3 (`guest_table`, and `guest_table_user` when the guest has user tables),
then any pinned L4 in no CR3. Each table is named with its M2P pfn and its page type as Xen
keeps it in `type_info` (`l2 page table, validated, pinned, count 1`). Xen's own L4 slots
(256-271, the hypervisor's range) are printed and not followed. L1 runs collapse exactly
as for shadows. With VADDR, vCPU 0's current tables (kernel or user mode) are walked for
that address, one line per level, down to the page it maps.
"""

from __future__ import annotations

import numpy as np

from emu.mm.p2m import INVALID_M2P_ENTRY
from emu.mm.page import PTE_ADDR_MASK
from emu.mm.page_info import (
    PGT_count_mask,
    PGT_l4_page_table,
    PGT_partial,
    PGT_pinned,
    PGT_type_mask,
    PGT_validated,
)
from keyhandlers import KeyhandlerError

P, PSE = 0x1, 0x80
SHIFTS = {4: 39, 3: 30, 2: 21, 1: 12}
XEN_SLOTS = range(256, 272)  # HYPERVISOR_VIRT_START..END (asm/config.h:138): Xen's own
TYPE_NAMES = {
    0: "no type",
    1: "l1 page table",
    2: "l2 page table",
    3: "l3 page table",
    4: "l4 page table",
    5: "seg desc page",
    6: "shared page",
    7: "writable page",
}


def type_desc(ti: int) -> str:
    """A frame's type_info in words (asm/mm.h PGT_* fields)."""
    parts = [TYPE_NAMES[(ti & PGT_type_mask) >> 61]]
    if ti & PGT_validated:
        parts.append("validated")
    if ti & PGT_pinned:
        parts.append("pinned")
    if ti & PGT_partial:
        parts.append("partial")
    parts.append(f"count {ti & PGT_count_mask}")
    return ", ".join(parts)


def pfn_of(machine, mfn: int) -> str:
    if mfn >= machine.ram.nr_frames:
        return "-"
    g = int(machine.m2p[mfn])
    return "-" if g == INVALID_M2P_ENTRY else f"{g:#x}"


def _table_note(machine, mfn: int) -> str:
    ti = int(machine.frames.type_info[mfn]) if mfn < machine.ram.nr_frames else 0
    return f"pfn {pfn_of(machine, mfn)}: {type_desc(ti)}"


def walk_all(machine, dom, lines: list[str], walk_l1, budget, flags_str) -> None:
    """Every present entry of the guest's tables (see the module docstring)."""
    lines.append(f"d{dom.domid}: pv guest, direct paging: the guest's own tables (no shadow)")
    tops: dict[int, list[str]] = {}
    for v in dom.vcpus:
        for mode, mfn in (("kernel", v.guest_table), ("user", v.guest_table_user)):
            if mfn:
                tops.setdefault(mfn, []).append(f"d{dom.domid}v{v.vcpu_id} {mode}")
    ft = machine.frames
    owned = ft.owned_by(dom.domid)
    ti = ft.type_info[owned]
    l4s = owned[
        ((ti & np.uint64(PGT_type_mask)) == np.uint64(PGT_l4_page_table))
        & ((ti & np.uint64(PGT_pinned)) != 0)
    ]
    for mfn in l4s.tolist():
        tops.setdefault(int(mfn), [])
    if not tops:
        lines.append(f"d{dom.domid}: no L4 in any vCPU's CR3 and none pinned")
    for l4, who in tops.items():
        where = ", ".join(who) + " cr3" if who else "pinned, in no CR3"
        lines.append(f"{where}: l4 mfn {l4:#x} ({_table_note(machine, l4)})")
        _walk_table(machine, l4, 4, lines, walk_l1, budget, flags_str)
    hidden = f", {budget.hidden_lines} l1 lines not shown" if budget.hidden_lines else ""
    lines.append(
        f"d{dom.domid}: {budget.l1_entries} present l1 entries in {len(budget.l1_tables)} l1 "
        f"table(s){hidden}"
    )


def _walk_table(machine, mfn: int, level: int, lines, walk_l1, b, flags_str) -> None:
    u64 = machine.ram.u64
    ents = u64[mfn << 9 : (mfn + 1) << 9]
    pres = np.flatnonzero(ents & np.uint64(P))
    ind = " " * (5 - level)
    if level == 1:
        walk_l1(machine, mfn, ents, pres, ind, lines, b, tab="mfn", frame="pfn")
        return
    for i in pres.tolist():
        e = int(ents[i])
        child = (e & PTE_ADDR_MASK) >> 12
        head = f"{ind}l{level}[{i:03x}] mfn {mfn:#x} -> {child:#x} {flags_str(e)}"
        if level == 4 and i in XEN_SLOTS:
            lines.append(f"{head}  (Xen's own slot: not followed)")
            continue
        if level in (3, 2) and e & PSE:
            size = "1 GiB" if level == 3 else "2 MiB"
            lines.append(f"{head}  ({size} page at pfn {pfn_of(machine, child)})")
            continue
        if child >= machine.ram.nr_frames:
            lines.append(f"{head}  (past the end of RAM)")
            continue
        seen = child in b.walked
        note = _table_note(machine, child) + (", shown above" if seen else "")
        lines.append(f"{head}  (l{level - 1} {note})")
        if not seen:
            b.walked.add(child)
            _walk_table(machine, child, level - 1, lines, walk_l1, b, flags_str)


def walk_va(machine, dom, va: int, lines: list[str], flags_str) -> None:
    """One address through vCPU 0's current tables (kernel or user mode)."""
    v = dom.vcpus[0] if dom.vcpus else None
    if v is None or not v.cr3_mfn():
        raise KeyhandlerError(f"d{dom.domid}v0 has no page tables loaded")
    mode = "kernel" if v.kernel_mode else "user"
    top = v.cr3_mfn()
    lines.append(
        f"d{dom.domid}v{v.vcpu_id} va {va:#018x}: cr3 mfn {top:#x} ({mode} mode), the "
        "guest's own tables (direct paging, no shadow)"
    )
    lines.append(f"lvl idx | {'table mfn/pfn':<20} {'entry':<16} {'flags':<14} | table's type")
    u64 = machine.ram.u64
    nr = machine.ram.nr_frames
    ft = machine.frames
    mfn, end = top, ""
    for level in (4, 3, 2, 1):
        i = (va >> SHIFTS[level]) & 511
        e = int(u64[(mfn << 9) + i])
        col = f"{mfn:#x}/{pfn_of(machine, mfn)}".ljust(20) + f" {e:016x} {flags_str(e)}"
        lines.append(f"l{level}  {i:03x} | {col} | {type_desc(int(ft.type_info[mfn]))}")
        child = (e & PTE_ADDR_MASK) >> 12
        if not e & P:
            end = f"l{level} entry not present: an access faults"
            break
        if level == 4 and i in XEN_SLOTS:
            end = "Xen's own slot (the guest cannot reach it)"
            break
        if level in (3, 2) and e & PSE:
            shift = SHIFTS[level]
            ma = (e & PTE_ADDR_MASK & ~((1 << shift) - 1)) + (va & ((1 << shift) - 1))
            child = ma >> 12
            end = f"mfn {child:#x} (pfn {pfn_of(machine, child)}), in a superpage"
            break
        if child >= nr:
            end = f"mfn {child:#x} is past the end of RAM"
            break
        if level == 1:
            ti = int(ft.type_info[child])
            end = f"mfn {child:#x} (pfn {pfn_of(machine, child)}): {type_desc(ti)}"
        mfn = child
    lines.append(f"page    | {end}")
