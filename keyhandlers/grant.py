"""`g`: print grant table usage (xen/common/grant_table.c:4390-4457, registered at :4461).

Every domain gets a grant table at creation (grant_table_init(): version 1, one frame
grown at once, max 64 grant frames and 1024 maptrack frames by default, grant_table.c:108-109).
A domain whose table has no pinned entry prints "no active grant table entries". Domains
of this machine carry a `grant_table` once the PV code gives them one; until then the table
is in its initial state (docs/differences.md: its frame is not allocated here).
"""

from __future__ import annotations

from keyhandlers import keyhandler

INITIAL_NR_GRANT_FRAMES = 1
MAX_GRANT_FRAMES = 64  # opt_max_grant_frames
MAX_MAPTRACK_FRAMES = 1024  # opt_max_maptrack_frames


def _table(dom) -> tuple[int, int, int, int, int, list]:
    """(version, frames, max frames, maptrack frames, max maptrack, active entries)."""
    gt = getattr(dom, "grant_table", None)
    if gt is None:
        return 1, INITIAL_NR_GRANT_FRAMES, MAX_GRANT_FRAMES, 0, MAX_MAPTRACK_FRAMES, []
    return (
        getattr(gt, "gt_version", 1),
        getattr(gt, "nr_grant_frames", INITIAL_NR_GRANT_FRAMES),
        getattr(gt, "max_grant_frames", MAX_GRANT_FRAMES),
        getattr(gt, "nr_maptrack_frames", 0),
        getattr(gt, "max_maptrack_frames", MAX_MAPTRACK_FRAMES),
        list(getattr(gt, "active_entries", lambda: [])()),
    )


def gnttab_usage_print(dom, out) -> None:
    out("      -------- active --------       -------- shared --------")
    out("[ref] localdom mfn      pin          localdom gmfn     flags")
    ver, nr, mx, nmt, mxmt, active = _table(dom)
    out(f"grant-table for remote d{dom.domid} (v{ver})")
    out(f"  {nr} frames ({mx} max), {nmt} maptrack frames ({mxmt} max)")
    # An active entry: (ref, local domid, mfn, pin, shared domid, frame, flags).
    for ref, ldom, mfn, pin, sdom, frame, flags in active:
        out(
            f"[0x{ref:03x}]  {ldom:5d} 0x{mfn:05x} 0x{pin:08x}      {sdom:5d} 0x{frame:06x} "
            f"0x{flags:02x}"
        )
    if not active:
        out("no active grant table entries")


@keyhandler("g", "print grant table usage", diagnostic=True)
def gnttab_usage_print_all(machine, out, args) -> None:
    out("gnttab_usage_print_all [ key 'g' pressed")
    with machine.lock:
        doms = machine.domain_list()
    for dom in doms:
        gnttab_usage_print(dom, out)
    out("gnttab_usage_print_all ] done")
