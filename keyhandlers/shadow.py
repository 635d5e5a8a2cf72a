"""`S`: blow all shadow tables (xen/arch/x86/mm/shadow/common.c: shadow_blow_all_tables).

Debug builds only in Xen; diagnostic since 4.7, so `*` runs it too.
"""

from __future__ import annotations

from keyhandlers import keyhandler


@keyhandler("S", "reset shadow pagetables", diagnostic=True)
def shadow_blow_all_tables(machine, out, args) -> None:
    out("'S' pressed -> blowing all shadow tables")
    for dom in machine.domain_list():
        if dom.paging is None or not dom.vcpus:
            continue
        # Xen blows each domain's tables under its paging lock, which shadow_teardown()
        # also takes; here the machine lock keeps a crashing vCPU's thread from tearing the
        # domain down meanwhile (quiesce first, then the lock: emu/access/scan.py `hold`).
        with machine.quiesce(dom), machine.lock:
            paging = dom.paging
            # shadow_blow_tables_per_domain(): only shadowed domains that have vCPUs; one
            # destroyed since the list was taken is gone (for_each_domain no longer has it)
            if machine.domains.get(dom.domid) is not dom or dom.is_dying:
                continue
            if paging is not None and dom.vcpus and not paging.dying:
                paging.blow_tables()
