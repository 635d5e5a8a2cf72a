"""`S`: blow all shadow tables (xen/arch/x86/mm/shadow/common.c: shadow_blow_all_tables).

Debug builds only in Xen; diagnostic since 4.7, so `*` runs it too.
"""

from __future__ import annotations

from keyhandlers import keyhandler


@keyhandler("S", "reset shadow pagetables", diagnostic=True)
def shadow_blow_all_tables(machine, out, args) -> None:
    out("'S' pressed -> blowing all shadow tables")
    for dom in list(machine.domains.values()):
        paging = dom.paging
        # shadow_blow_tables_per_domain(): only shadowed domains that have vCPUs
        if paging is None or not dom.vcpus:
            continue
        with machine.quiesce(dom):
            if dom.paging is paging and not paging.dying:
                paging.blow_tables()
