"""`u`: dump NUMA info (xen/common/numa.c:759-835 dump_numa(), registered at :838).

One node (no SRAT: Xen fakes node 0 over all of RAM), every CPU on it; the memory of each
domain is counted over its page list. No domain has a vNUMA layout.
"""

from __future__ import annotations

from keyhandlers import keyhandler


def cpu_node_lines(nr_cpus: int, node: int = 0) -> list[str]:
    """numa.c:781-800: runs of consecutive CPUs on one node."""
    if nr_cpus > 1:
        return [f"CPU0...{nr_cpus - 1} -> NODE{node}"]
    return [f"CPU0 -> NODE{node}"]


@keyhandler("u", "dump NUMA info", diagnostic=True)
def dump_numa(machine, out, args) -> None:
    out(f"'u' pressed -> dumping numa info (now = {machine.now()})")
    # numa.c:770: node 0 starts at pfn 0 and spans every frame of the host.
    out(f"NODE0 start->0 size->{machine.ram.nr_frames} free->{machine.free_pages()}")
    for line in cpu_node_lines(machine.host.cpus):
        out(line)
    out("Memory location of each domain:")
    with machine.lock:
        doms = machine.domain_list()
    for dom in doms:
        out(f"d{dom.domid} (total: {dom.tot_pages - dom.extra_pages}):")
        out(f"    Node 0: {machine.frames.owned_by(dom.domid).size}")
