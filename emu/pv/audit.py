"""The PV part of the machine audit: type and general reference counts against the references
that actually exist (issue 10 item 7).

For each PV domain, every frame it owns (and every Xen page shared with it) must carry:

- a type count equal to: one per present entry of a validated table of the next level up
  or, read-only, of the same level (L2..L4 entries, the L4's Xen slots and an entry mapping
  its own table excluded), one per writable L1 mapping, one for the pin,
  one per vCPU whose kernel or user CR3 it is, one per vCPU GDT that uses it, one per
  writable grant device mapping, and the one a shared Xen page (shared_info, grant frames) is
  created with;
- a general count equal to those references plus every read-only L1 mapping and read-only
  grant device mapping, plus the
  allocation reference (PGC_allocated; a shared Xen page's own reference);
- a validated page-table type only with a non-zero type count.
"""

from __future__ import annotations

import numpy as np

from emu.mm.page_info import (
    PGC_count_mask,
    PGT_count_mask,
    PGT_pinned,
    PGT_type_mask,
    PGT_validated,
)

ADDR_MASK = np.uint64(0x000FFFFFFFFFF000)
P, RW = np.uint64(1), np.uint64(2)
MAX_LISTED = 8
XEN_SLOTS = np.zeros(512, dtype=bool)
XEN_SLOTS[256:272] = True


def audit_pv(machine) -> list[str]:
    """Violations (empty: every count matches). Callers hold the vCPUs still."""
    out: list[str] = []
    for dom in list(machine.domains.values()):
        if getattr(dom, "pv", None) is not None and not dom.is_dying:
            out.extend(_audit_domain(machine, dom))
    return out


def _audit_domain(machine, dom) -> list[str]:
    ft = machine.frames
    u64 = machine.ram.u64
    nr = ft.nr_frames
    frames = np.union1d(ft.owned_by(dom.domid), np.array(dom.xenpage_mfns, dtype=np.int64))
    ti = ft.type_info[frames].astype(np.uint64)
    types = ti & np.uint64(PGT_type_mask)
    exp_type = np.zeros(nr, dtype=np.int64)
    exp_gen = np.zeros(nr, dtype=np.int64)
    bad: list[str] = []
    for level in (1, 2, 3, 4):
        is_level = (types == np.uint64(level << 61)) & ((ti & np.uint64(PGT_validated)) != 0)
        tables = frames[is_level]
        if not len(tables):
            continue
        zero = tables[(ti[is_level] & np.uint64(PGT_count_mask)) == 0]
        if len(zero):
            bad.append(f"d{dom.domid}: validated L{level} with type count 0: {_list(zero)}")
        entries = np.stack([u64[t << 9 : (t + 1) << 9] for t in tables])
        present = (entries & P) != 0
        if level == 4:
            present &= ~XEN_SLOTS
        if level > 1:  # a linear self-map holds no reference (emu/pv/linear_pt.py)
            mapped = ((entries & ADDR_MASK) >> np.uint64(12)).astype(np.int64)
            present &= mapped != tables.astype(np.int64)[:, None]
        targets = ((entries[present] & ADDR_MASK) >> np.uint64(12)).astype(np.int64)
        targets = targets[targets < nr]
        np.add.at(exp_gen, targets, 1)
        if level == 1:
            rw = ((entries & RW) != 0)[present]
            rw_targets = ((entries[present][rw] & ADDR_MASK) >> np.uint64(12)).astype(np.int64)
            np.add.at(exp_type, rw_targets[rw_targets < nr], 1)
        else:
            np.add.at(exp_type, targets, 1)
    # Grant device mappings of this domain's frames, by any domain (emu/pv/grant_map.py):
    # one general reference, and a writable type reference unless read-only. Host mappings
    # are L1 entries, counted above.
    for ld in list(machine.domains.values()):
        lgt = getattr(getattr(ld, "pv", None), "gnttab", None)
        for mt in list(lgt.maptrack.values()) if lgt is not None else []:
            if mt.flags & 1 and mt.domid == dom.domid:  # GNTMAP_device_map
                act = dom.pv.gnttab.active.get(mt.ref)
                if act is not None:
                    exp_gen[act.mfn] += 1
                    exp_type[act.mfn] += 0 if mt.flags & 4 else 1  # GNTMAP_readonly
    # share_xen_page_with_guest(): a shared Xen page holds one writable type reference.
    exp_type[np.array(dom.xenpage_mfns, dtype=np.int64)] += 1
    pinned = frames[(ti & np.uint64(PGT_pinned)) != 0]
    exp_type[pinned] += 1
    exp_gen[pinned] += 1
    for v in dom.vcpus:
        for mfn in [getattr(v, "guest_table", 0), getattr(v, "guest_table_user", 0)]:
            if mfn:
                exp_type[mfn] += 1
                exp_gen[mfn] += 1
        for mfn in getattr(v, "gdt_frames", []):
            exp_type[mfn] += 1
            exp_gen[mfn] += 1
    got_type = (ti & np.uint64(PGT_count_mask)).astype(np.int64)
    got_gen = (ft.count_info[frames] & np.uint64(PGC_count_mask)).astype(np.int64)
    wrong = frames[got_type != exp_type[frames]]
    if len(wrong):
        bad.append(
            f"d{dom.domid}: {len(wrong)} frame(s) whose type count is not their references: "
            + _pairs(wrong, ft.type_info, PGT_count_mask, exp_type)
        )
    wrong = frames[got_gen != exp_gen[frames] + 1]
    if len(wrong):
        bad.append(
            f"d{dom.domid}: {len(wrong)} frame(s) whose general count is not their references: "
            + _pairs(wrong, ft.count_info, PGC_count_mask, exp_gen + 1)
        )
    return bad


def _list(mfns: np.ndarray) -> str:
    return " ".join(f"{int(m):#x}" for m in mfns[:MAX_LISTED])


def _pairs(mfns: np.ndarray, field: np.ndarray, mask: int, expected: np.ndarray) -> str:
    return " ".join(
        f"{int(m):#x}({int(field[m]) & mask}!={int(expected[m])})" for m in mfns[:MAX_LISTED]
    )
