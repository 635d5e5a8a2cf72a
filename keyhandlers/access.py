"""`U` scan accessed pages, `Z` reset accessed-page window (our keys; docs/contract.md).

`U [dN [GFN_FIRST-GFN_LAST]]`, per domain (every shadowed guest and every PV domU without
arguments; dom0's frames are not run by this emulator, so it has no access record and is not
listed):

    (XEN) d1 pages=16128 accessed=300 dirty=100 window=300 never=15828
    (XEN) d1 heat [####::..                                                        ] 0x0-0x3fff
    (XEN) d1 idle 0=300 1=0 2-3=0 4-7=0 8-15=0 16+=0 never=15828

P = pages the domain owns in the range (valid P2M entries), A = read or written by the
guest since it owns them, D = written, R = accessed since the last `Z` (or creation),
N = P - A. The heat line frames 64 columns in `[...]` followed by the gfn range it covers
(inclusive); gfn g is in column `(g - FIRST) * 64 // (LAST - FIRST + 1)`; a column shows
` ` (no page accessed in the window), `.` (<25% of its owned pages), `:` (<50%), `o` (<75%)
or `#` (>=75%). The idle line (like the others, this emulator's own: Xen has no `U`)
counts the owned pages by idle age, the windows (keys `Z`) since their last access: `0` =
accessed in the open window, `1` = last accessed in the window the last `Z` closed, then
2-3, 4-7, 8-15, 16 or more windows, and `never` accessed. The scan itself is
emu/access/scan.py (`scan_domain`); the text is written here (`summary_line`, `heat_line`,
`idle_line`) beside its reader.

A PV domain's accesses are the A/D bits of its own L1 page tables, found through the frame
table (emu/access/pv.py); same lines.

`Z [dN]`: a new window for one or every guest: idle ages move on, the A bits of its L1
entries (shadow entries; for PV, the guest's own) are cleared and every vCPU's TLB is
flushed, so the next access is seen again.

`parse_report(text)` turns `U` output (e.g. `Console.debug_key("U")`) back into numbers.
"""

from __future__ import annotations

import re
from contextlib import nullcontext

import numpy as np

from emu.access.scan import (
    IDLE_BUCKETS,
    DomainScan,
    ScanError,
    hold,
    reset_window,
    scan_domain,
    tracked,
)
from keyhandlers import KeyhandlerError, keyhandler
from keyhandlers.args import is_domain_arg, parse_domain, parse_range


def _targets(machine, args: tuple[str, ...], key: str, max_args: int):
    if len(args) > max_args:
        raise KeyhandlerError(f"too many arguments (usage: {key})")
    if not args:
        return [d for _, d in sorted(machine.domains.items()) if tracked(d)]
    if not is_domain_arg(args[0]):
        raise KeyhandlerError(f"bad domain {args[0]!r} (expected dN, e.g. d1)")
    dom = parse_domain(machine, args[0])
    if not tracked(dom):
        raise KeyhandlerError(f"d{dom.domid} is not a shadowed guest: no access record")
    return [dom]


@keyhandler(
    "U",
    "scan accessed pages",
    diagnostic=True,
    args="[dN [GFN_FIRST-GFN_LAST]]",
    pressed="scanning accessed pages",
)
def scan_accessed_pages(machine, out, args: tuple[str, ...]) -> None:
    doms = _targets(machine, args, "U [dN [GFN_FIRST-GFN_LAST]]", 2)
    first = last = None
    if len(args) == 2:
        first, last = parse_range(args[1])
    lines = []
    # One hold for the whole report (every domain's vCPUs out of emu_start, lifecycle still):
    # one consistent snapshot, and one wake-up of the scheduler instead of one per domain.
    with hold(machine, doms[0] if len(doms) == 1 else None) if doms else nullcontext():
        for dom in doms:
            try:
                s = scan_domain(machine, dom, first, last, quiesce=False, detail=False)
            except ScanError as e:
                if len(doms) == 1:
                    raise KeyhandlerError(str(e)) from None
                continue  # destroyed meanwhile: it leaves the report
            lines += [summary_line(s), heat_line(s), idle_line(s)]
    if not lines and not args:
        lines.append("no shadowed guests")
    for line in lines:
        out(line)


@keyhandler(
    "Z",
    "reset accessed-page window",
    diagnostic=False,
    args="[dN]",
    pressed="resetting accessed-page window",
)
def reset_accessed_window(machine, out, args: tuple[str, ...]) -> None:
    doms = _targets(machine, args, "Z [dN]", 1)
    lines = []
    for dom in doms:
        try:
            n = reset_window(machine, dom)
        except ScanError as e:
            if len(doms) == 1:
                raise KeyhandlerError(str(e)) from None
            continue
        nv = len(dom.vcpus)
        what = f"L1 shadow{'s' * (n != 1)}" if dom.paging is not None else (
            f"guest L1 table{'s' * (n != 1)}")  # fmt: skip
        lines.append(
            f"d{dom.domid} window reset: A cleared in {n} {what}, "
            f"{nv} vCPU TLB{'s' * (nv != 1)} flushed"
        )
    if not lines and not args:
        lines.append("no shadowed guests")
    for line in lines:
        out(line)


# ---- one sample for `xenconsole record` (the control channel's `access` request) ------------

MAX_BUCKETS = 4096


def bucket_edges(n: int, buckets: int) -> np.ndarray:
    """Gfn offsets where each of `buckets` buckets of `n` gfns starts, then `n`: bucket b
    covers ceil(b*n/B) .. ceil((b+1)*n/B)-1, as the heat line's columns do."""
    b = np.arange(buckets + 1, dtype=np.int64)
    return -((-b * n) // buckets)


def bucket_counts(flags: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """True entries of `flags` (bool, one per gfn) per bucket (`bucket_edges`)."""
    n, b = flags.size, edges.size - 1
    u8 = flags.view(np.uint8)
    if n and n % b == 0:
        return u8.reshape(b, -1).sum(axis=1, dtype=np.int64)
    if n >= b:  # every bucket non-empty: one reduceat (a cumsum costs 10x more)
        return np.add.reduceat(u8, edges[:-1], dtype=np.int64)
    c = np.concatenate(([0], np.cumsum(u8, dtype=np.int64)))
    return np.diff(c[edges])


def sample(machine, buckets: int = 256, reset: bool = True) -> dict:
    """`U` for every guest as numbers, then (with `reset`) `Z` for each, under one hold.

    Per domain: domid, name, gfns (P2M length), pages/accessed/dirty/window/never (`U`'s
    summary), idle (the idle line's 7 counts), seq (the window's number: keys `Z` before
    it), and per gfn bucket (`bucket_edges`) the owned pages and those accessed in the
    window. The window reported is the one `reset` closes."""
    if not 1 <= buckets <= MAX_BUCKETS:
        raise KeyhandlerError(f"buckets must be 1..{MAX_BUCKETS}, got {buckets}")
    doms = [d for _, d in sorted(machine.domains.items()) if tracked(d)]
    res: dict = {"time_ns": machine.now(), "domains": []}
    with hold(machine, doms[0] if len(doms) == 1 else None) if doms else nullcontext():
        for dom in doms:
            try:
                s = scan_domain(machine, dom, quiesce=False, detail=False)
            except ScanError:
                continue  # destroyed meanwhile
            e = bucket_edges(s.owned.size, buckets)
            res["domains"].append(
                {
                    "domid": dom.domid,
                    "name": dom.name,
                    "gfns": int(s.owned.size),
                    "pages": s.pages,
                    "accessed": s.nr_accessed,
                    "dirty": s.nr_dirty,
                    "window": s.nr_window,
                    "never": s.nr_never,
                    "idle": list(s.idle_hist),
                    "seq": dom.access_windows,
                    "bucket_window": bucket_counts(s.window, e).tolist(),
                    "bucket_owned": bucket_counts(s.owned, e).tolist(),
                }
            )
            if reset:
                reset_window(machine, dom, quiesce=False, scan=s)
    return res


# ---- the `U` text: writer and reader ------------------------------------------------------

HEAT_CHARS = " .:o#"  # by heat level 0..4 (DomainScan.heat_levels)


def summary_line(s: DomainScan) -> str:
    """`dN pages=P accessed=A dirty=D window=R never=N`."""
    return (
        f"d{s.domid} pages={s.pages} accessed={s.nr_accessed} "
        f"dirty={s.nr_dirty} window={s.nr_window} never={s.nr_never}"
    )


def heat(s: DomainScan) -> str:
    """The 64 heat characters: ` ` none accessed in the window, `.` `:` `o` `#` by quarter."""
    return "".join(HEAT_CHARS[i] for i in s.heat_levels())


def heat_line(s: DomainScan) -> str:
    """`dN heat [<64 columns>] 0xFIRST-0xLAST` (the second line of `U` per domain)."""
    return f"d{s.domid} heat [{heat(s)}] {s.first:#x}-{s.last:#x}"


def idle_line(s: DomainScan) -> str:
    """`dN idle 0=A 1=B 2-3=C 4-7=D 8-15=E 16+=F never=N` (the third line of `U`)."""
    names = (*IDLE_BUCKETS, "never")
    return f"d{s.domid} idle " + " ".join(
        f"{k}={v}" for k, v in zip(names, s.idle_hist, strict=True)
    )


_SUMMARY = re.compile(
    r"^\(XEN\) (?:\[[^\]\n]*\] )?d(\d+) pages=(\d+) accessed=(\d+) dirty=(\d+) "
    r"window=(\d+) never=(\d+)\r?$",
    re.M,
)
_HEAT = re.compile(
    r"^\(XEN\) (?:\[[^\]\n]*\] )?d(\d+) heat \[(.{64})\] (0x[0-9a-f]+)-(0x[0-9a-f]+)\r?$", re.M
)


_IDLE = re.compile(
    r"^\(XEN\) (?:\[[^\]\n]*\] )?d(\d+) idle 0=(\d+) 1=(\d+) 2-3=(\d+) 4-7=(\d+) "
    r"8-15=(\d+) 16\+=(\d+) never=(\d+)\r?$",
    re.M,
)


def parse_report(text: str) -> dict[int, dict]:
    """`U` output -> {domid: {pages, accessed, dirty, window, never, heat, first, last, idle}}
    (`idle`: the 7 counts of the idle line, buckets 0 1 2-3 4-7 8-15 16+ never)."""
    res: dict[int, dict] = {}
    for m in _SUMMARY.finditer(text):
        keys = ("pages", "accessed", "dirty", "window", "never")
        res[int(m.group(1))] = dict(zip(keys, map(int, m.groups()[1:]), strict=True))
    for m in _HEAT.finditer(text):
        d = res.setdefault(int(m.group(1)), {})
        d.update(heat=m.group(2), first=int(m.group(3), 16), last=int(m.group(4), 16))
    for m in _IDLE.finditer(text):
        res.setdefault(int(m.group(1)), {})["idle"] = [int(x) for x in m.groups()[1:]]
    return res
