"""`m` memory info and `H` heap dump (xen/common/page_alloc.c pagealloc_info(), dump_heap())."""

from __future__ import annotations

from emu.mm.page import PAGE_SHIFT
from keyhandlers import keyhandler


@keyhandler("m", "memory info", diagnostic=True)
def pagealloc_info(machine, out, args) -> None:
    from emu.mm.page_alloc import MEMZONE_XEN, NR_ZONES

    heap = machine.heap
    with heap.lock:
        avail = heap.avail[0].tolist()
    out("Physical memory information:")
    out(f"    Xen heap: {avail[MEMZONE_XEN] << (PAGE_SHIFT - 10)}kB free")
    total = 0
    # dma_bitsize is 0 on a single-node x86 host: no "DMA heap" line.
    for zone in range(MEMZONE_XEN + 1, NR_ZONES):
        n = avail[zone]
        if n:
            total += n
            out(f"    heap[{zone:02d}]: {n << (PAGE_SHIFT - 10)}kB free")
    out(f"    Dom heap: {total << (PAGE_SHIFT - 10)}kB free")


@keyhandler("H", "dump heap info", diagnostic=True)
def dump_heap(machine, out, args) -> None:
    heap = machine.heap
    out(f"'H' pressed -> dumping heap info (now = {machine.now()})")
    with heap.lock:
        avail = heap.avail.tolist()
        need_scrub = list(heap.node_need_scrub)
    for node, zones in enumerate(avail):
        if not any(zones) and node:
            continue
        for zone, n in enumerate(zones):
            out(f"heap[node={node}][zone={zone}] -> {n} pages")
    for node, n in enumerate(need_scrub):
        if n:
            out(f"Node {node} has {n} unscrubbed pages")
