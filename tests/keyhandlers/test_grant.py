"""`g` (keyhandlers/grant.py) against Xen 4.22's gnttab_usage_print_all() format."""

from __future__ import annotations

from guest_helpers import press


def test_g_grant_tables_without_usage(m):
    out = press(m, "g")
    # grant_table.c:4446 "%s [ key '%c' pressed", :4453 "%s ] done"; per domain :4397-4404
    # and :4443 for a table with no pinned entry; grant_table_init() defaults (:108-109).
    per_dom = [
        "      -------- active --------       -------- shared --------",
        "[ref] localdom mfn      pin          localdom gmfn     flags",
        "grant-table for remote d{d} (v1)",
        "  1 frames (64 max), 0 maptrack frames (1024 max)",
        "no active grant table entries",
    ]
    want = ["gnttab_usage_print_all [ key 'g' pressed"]
    for d in (0, 1):
        want += [ln.format(d=d) for ln in per_dom]
    assert out == want + ["gnttab_usage_print_all ] done"]
