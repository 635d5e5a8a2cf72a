"""Whole-machine memory audit: every frame is in exactly one state (docs/design.md).

It also runs the shadow code's audit (emu/shadow/audit.py) for shadowed domains.

States: free (in a heap free list), Xen (PGC_xen_heap: Xen's own frames, Xen-heap pages),
owned by exactly one live domain (PGC_allocated, owner set, P2M and M2P agreeing), or in
exactly one domain's shadow pool. `audit()` is vectorised (numpy over the whole frame
table); `audit_naive()` does the same classification with a Python loop per frame, as a
baseline for bench/bench_memory.py.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np

from emu.mm.p2m import INVALID_M2P_ENTRY
from emu.mm.page import INVALID_MFN
from emu.mm.page_info import (
    PGC_allocated,
    PGC_count_mask,
    PGC_need_scrub,
    PGC_state,
    PGC_state_free,
    PGC_state_inuse,
    PGC_xen_heap,
)
from emu.pv.audit import audit_pv
from emu.shadow.audit import audit_shadows

MAX_PER_KIND = 8  # example frames listed per kind of violation


@dataclass
class AuditResult:
    nr_frames: int = 0
    free: int = 0
    xen: int = 0
    domain: dict[int, int] = field(default_factory=dict)  # domid -> frames owned
    shadow: dict[int, int] = field(default_factory=dict)  # domid -> pool frames
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def _report(out: list[str], what: str, mfns: np.ndarray) -> None:
    if len(mfns):
        ex = " ".join(f"{int(m):#x}" for m in mfns[:MAX_PER_KIND])
        more = f" (+{len(mfns) - MAX_PER_KIND} more)" if len(mfns) > MAX_PER_KIND else ""
        out.append(f"{len(mfns)} frame(s) {what}: {ex}{more}")


def _pools(machine) -> dict[int, np.ndarray]:
    pools = {}
    for domid, dom in machine.domains.items():
        if dom.paging is not None:
            pools[domid] = np.asarray(dom.paging.pool_mfns(), dtype=np.int64)
    return pools


# PGC_ flags as bits of count_info's top byte (bits 56..63).
F_ALLOCATED = PGC_allocated >> 56
F_XEN_HEAP = PGC_xen_heap >> 56
F_STATE = PGC_state >> 56
F_STATE_FREE = PGC_state_free >> 56
F_NEED_SCRUB = PGC_need_scrub >> 56


class _Scratch:
    """Per-machine work arrays, reused so that each audit does not page-fault them in."""

    def __init__(self, nr: int) -> None:
        self.flags = np.zeros(nr + 1, dtype=np.uint8)  # +1: a sentinel for reduceat
        self.tmp = np.zeros(nr, dtype=np.uint8)
        self.is_free = np.zeros(nr + 1, dtype=bool)
        self.is_xen = np.zeros(nr, dtype=bool)
        self.owned = np.zeros(nr, dtype=bool)
        self.mapped = np.zeros(nr, dtype=bool)


_SCRATCH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # machine -> _Scratch


def _scratch(machine) -> _Scratch:
    sc = _SCRATCH.get(machine)
    if sc is None:
        sc = _SCRATCH[machine] = _Scratch(machine.frames.nr_frames)
    return sc


def _mask(flags: np.ndarray, tmp: np.ndarray, bits: int, value: int, out: np.ndarray) -> None:
    np.bitwise_and(flags, bits, out=tmp)
    np.equal(tmp, value, out=out)


def audit_full(machine) -> AuditResult:
    """Classify every frame and cross-check the heap, P2M, M2P and shadow pools.

    Works on count_info's flag byte, copied out of the frame table in one pass; the owner
    word is read only for the frames a check is about. Whole-table lists of offending frames
    are computed only when a count shows something is wrong. The steps below each check one
    state; the states are disjoint, so their counts must add up to every frame.
    """
    nr = machine.frames.nr_frames
    res = AuditResult(nr_frames=nr)
    bad = res.violations
    sc = _scratch(machine)
    # vCPUs out of Unicorn for the duration: shadows and guest tables hold still.
    with machine.quiesce(None), machine.lock, machine.heap.lock:
        _classify(machine, sc)
        live_codes = np.array([d + 1 for d in machine.domains], dtype=np.uint32)
        nfree = _check_free(machine, sc, bad)
        nxen = _check_xen(machine, sc, live_codes, bad)
        nowned = _check_owned(machine, sc, live_codes, res)
        pools = _pools(machine)
        pool_all, npool = _check_pools(sc, pools, res)
        if bad or nfree + nxen + nowned + npool != nr:
            in_pool = np.zeros(nr, dtype=bool)
            in_pool[pool_all] = True
            lost = ~(sc.is_free[:nr] | sc.is_xen | sc.owned | in_pool)
            _report(bad, "in no state (lost)", np.flatnonzero(lost))
        res.free = nfree
        res.xen = nxen
        # The shadow code's own audit (hash chains, shadow entries against guest entries and
        # the P2M), under the same quiesce.
        if pools:
            bad.extend(f"shadow: {v}" for v in audit_shadows(machine))
        # PV domains: type and general counts against the references that exist.
        if machine.pv is not None:
            bad.extend(f"pv: {v}" for v in audit_pv(machine))
    return res


def _classify(machine, sc: _Scratch) -> None:
    """Copy the flag byte out and fill the free / Xen / domain-owned masks from it."""
    nr = machine.frames.nr_frames
    flags = sc.flags[:nr]
    np.copyto(flags, machine.frames.flags)
    _mask(flags, sc.tmp, F_STATE, F_STATE_FREE, sc.is_free[:nr])
    _mask(flags, sc.tmp, F_STATE | F_XEN_HEAP, F_XEN_HEAP, sc.is_xen)
    _mask(flags, sc.tmp, F_STATE | F_XEN_HEAP | F_ALLOCATED, F_ALLOCATED, sc.owned)


def _check_free(machine, sc: _Scratch, bad: list[str]) -> int:
    """Free frames: exactly the union of the heap's free chunks, each on one list, and the
    heap's counters agree. Returns the number of free frames."""
    ft, heap = machine.frames, machine.heap
    nr = ft.nr_frames
    flags, is_free = sc.flags[:nr], sc.is_free[:nr]
    heads, orders, zones = heap.free_chunks()
    sizes = np.left_shift(1, orders)
    order_ = np.argsort(heads, kind="stable")
    h, sz = heads[order_], sizes[order_]
    nfree = int(np.count_nonzero(is_free))
    _report(bad, "on two free lists (overlapping chunks)", h[1:][h[1:] < (h + sz)[:-1]])
    _report(bad, "free chunk not order-aligned", heads[heads % sizes != 0])
    _report(bad, "free head with wrong order", heads[ft.v[heads] != orders])
    if len(h):
        # Frames marked free inside each chunk: one reduceat pass over the free mask.
        idx = np.empty(2 * len(h), dtype=np.int64)
        idx[0::2], idx[1::2] = h, np.minimum(h + sz, nr)
        inside = np.add.reduceat(sc.is_free.view(np.uint8), idx, dtype=np.int64)[0::2]
        _report(bad, "head of a free chunk with frames in use", h[inside != sz])
    if nfree != int(sizes.sum()):
        cover = np.zeros(nr + 1, dtype=np.int32)
        np.add.at(cover, heads, 1)
        np.add.at(cover, heads + sizes, -1)
        listed = np.cumsum(cover[:nr]) > 0
        _report(bad, "free in page_info but on no free list", np.flatnonzero(is_free & ~listed))
        _report(bad, "on a free list but not free in page_info", np.flatnonzero(listed & ~is_free))
    # Freed pages wait for the idle scrubber (emu/mm/page_alloc.py) with PGC_need_scrub:
    # only free frames carry it, and node_need_scrub counts exactly those.
    np.equal(flags, F_STATE_FREE | F_NEED_SCRUB, out=sc.mapped)
    dirty = int(np.count_nonzero(sc.mapped))
    if dirty != sum(heap.node_need_scrub):
        bad.append(
            f"{dirty} free frames need scrubbing but node_need_scrub={sum(heap.node_need_scrub)}"
        )
    np.bitwise_and(flags, F_NEED_SCRUB, out=sc.tmp)
    np.not_equal(sc.tmp, 0, out=sc.mapped)
    sc.mapped &= ~is_free
    if sc.mapped.any():
        _report(bad, "need scrubbing but not free", np.flatnonzero(sc.mapped))
    if nfree != heap.total_avail_pages or nfree != int(heap.avail.sum()):
        bad.append(
            f"heap counts disagree: {nfree} free frames, total_avail_pages="
            f"{heap.total_avail_pages}, sum(avail)={int(heap.avail.sum())}"
        )
    zone_pages = np.bincount(zones, weights=sizes, minlength=heap.avail.shape[1])
    if not np.array_equal(zone_pages.astype(np.int64), heap.avail[0]):
        bad.append("avail[node][zone] disagrees with the free lists")
    return nfree


def _check_xen(machine, sc: _Scratch, live_codes: np.ndarray, bad: list[str]) -> int:
    """Xen frames: the owner, if any, is a live domain. Returns their number."""
    xen_idx = np.flatnonzero(sc.is_xen)
    xv = machine.frames.v[xen_idx]
    _report(
        bad,
        "Xen-heap page shared with a dead domain",
        xen_idx[(xv != 0) & ~np.isin(xv, live_codes)],
    )
    return len(xen_idx)


def _check_owned(machine, sc: _Scratch, live_codes: np.ndarray, res: AuditResult) -> int:
    """Domain frames: owned by a live domain, count >= 1, in that domain's P2M, M2P back.
    Fills res.domain; returns the number of owned frames."""
    ft = machine.frames
    nr = ft.nr_frames
    bad, owned = res.violations, sc.owned
    owned_idx = np.flatnonzero(owned)
    # Owner codes above the highest live one all count as "dead" (the last slot).
    top = int(live_codes.max(initial=0)) + 1
    owners = np.minimum(ft.v[owned_idx], top)
    live_lut = np.zeros(top + 1, dtype=bool)
    live_lut[live_codes] = True
    _report(bad, "owned by no live domain", owned_idx[~live_lut[owners]])
    counts = ft.count_info[owned_idx] & np.uint64(PGC_count_mask)
    _report(bad, "allocated with reference count 0", owned_idx[counts == 0])
    del counts
    per_owner = np.bincount(owners, minlength=top + 1)
    # Each frame in at most one P2M: an M2P entry names one gfn, and the owner check
    # pins the domain, so a frame mapped twice fails one of the checks below.
    mapped = sc.mapped
    mapped[:] = False
    nmapped = 0
    for domid, dom in machine.domains.items():
        p2m = dom.p2m
        gfns = np.flatnonzero(p2m != INVALID_MFN)
        mfns = p2m[gfns].astype(np.int64)
        out_of_range = mfns >= nr
        if np.any(out_of_range):
            bad.append(f"d{domid}: {int(out_of_range.sum())} P2M entries beyond RAM")
            gfns, mfns = gfns[~out_of_range], mfns[~out_of_range]
        if dom.xenpage_mfns:  # its shared_info, mapped by an HVM guest (add_to_physmap)
            mine = np.isin(mfns, np.asarray(dom.xenpage_mfns, dtype=np.int64))
            if np.any(mine):
                mapped[mfns[mine]] = True  # a Xen page: not owned, not in tot_pages
                nmapped += int(np.count_nonzero(mine))
                gfns, mfns = gfns[~mine], mfns[~mine]
        _report(bad, f"mapped by d{domid} and by another P2M", mfns[mapped[mfns]])
        mapped[mfns] = True
        nmapped += len(mfns)
        code = np.uint32(domid + 1)
        _report(
            bad,
            f"in d{domid}'s P2M but not owned by it",
            mfns[~owned[mfns] | (ft.v[mfns] != code)],
        )
        _report(
            bad,
            f"in d{domid}'s P2M with M2P disagreeing",
            mfns[machine.m2p[mfns] != gfns.astype(np.uint64)],
        )
        n_owned = int(per_owner[code]) if code < len(per_owner) else 0
        res.domain[domid] = n_owned
        if n_owned != dom.tot_pages or n_owned != len(gfns):
            bad.append(
                f"d{domid}: tot_pages={dom.tot_pages} but {n_owned} frames owned and "
                f"{len(gfns)} P2M entries"
            )
    _report(bad, "owned but in no P2M", owned_idx[~mapped[owned_idx]])
    if int(np.count_nonzero(machine.m2p != INVALID_M2P_ENTRY)) != nmapped:
        m2p_set = np.flatnonzero(machine.m2p != INVALID_M2P_ENTRY)
        _report(bad, "with an M2P entry but in no P2M", m2p_set[~mapped[m2p_set]])
    return len(owned_idx)


def _check_pools(
    sc: _Scratch, pools: dict[int, np.ndarray], res: AuditResult
) -> tuple[np.ndarray, int]:
    """Shadow pools: anonymous in-use frames, each in exactly one pool. Fills res.shadow;
    returns every pool frame and the number of distinct ones."""
    bad = res.violations
    is_free = sc.is_free[: len(sc.owned)]
    pool_all = np.concatenate(list(pools.values())) if pools else np.zeros(0, np.int64)
    for domid, pool in pools.items():
        res.shadow[domid] = len(pool)
        bad_kind = is_free[pool] | sc.is_xen[pool] | sc.owned[pool]
        _report(bad, f"in d{domid}'s shadow pool but not anonymous in-use", pool[bad_kind])
    srt = np.sort(pool_all)
    _report(bad, "in two shadow pools", np.unique(srt[1:][srt[1:] == srt[:-1]]))
    return pool_all, len(np.unique(srt))


def audit(machine) -> list[str]:
    """Violations found (empty list = consistent)."""
    return audit_full(machine).violations


def audit_naive(machine, frames: range | None = None) -> tuple[dict[str, int], int]:
    """The per-frame state classification as a plain Python loop (benchmark baseline).

    Returns (counts per state, number of frames in no or several states) for `frames`
    (default: all). Same rules as `audit_full`'s per-frame part.
    """
    ft = machine.frames
    pi = ft.pi
    pools: dict[int, int] = {}
    for pool in _pools(machine).values():
        for m in pool.tolist():
            pools[m] = pools.get(m, 0) + 1
    live = {d + 1 for d in machine.domains}
    p2m_of = {d + 1: dom.p2m for d, dom in machine.domains.items()}
    counts = {"free": 0, "xen": 0, "domain": 0, "shadow": 0}
    wrong = 0
    for mfn in frames if frames is not None else range(ft.nr_frames):
        rec = pi[mfn]
        ci = int(rec["count_info"])
        owner = int(rec["v"])
        state = ci & PGC_state
        n = 0
        if state == PGC_state_free:
            counts["free"] += 1
            n += 1
        elif state == PGC_state_inuse:
            if ci & PGC_xen_heap:
                counts["xen"] += 1
                n += 1
            elif ci & PGC_allocated:
                gfn = int(machine.m2p[mfn])
                p2m = p2m_of.get(owner)
                if owner in live and p2m is not None and gfn < len(p2m) and int(p2m[gfn]) == mfn:
                    counts["domain"] += 1
                    n += 1
        if mfn in pools:
            counts["shadow"] += 1
            n += pools[mfn]
        if n != 1:
            wrong += 1
    return counts, wrong
