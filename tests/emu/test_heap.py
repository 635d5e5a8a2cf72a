"""The buddy heap (zones, orders, merging, scrubbing), MachineRAM, and keys m / H."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from emu.mm.page_alloc import (
    MAX_ORDER,
    NR_ZONES,
    Heap,
    MEMF_bits,
    aligned_chunks,
    page_to_zone,
    zones_of,
)
from emu.mm.page_info import FrameTable, PGC_state, PGC_state_free, PGC_xen_heap
from emu.mm.ram import MachineRAM
from keyhandlers import KEY_TABLE

NR = 1 << 16  # 256 MiB worth of frames


def fresh_heap(nr=NR, ram=None):
    ft = FrameTable(nr)
    heap = Heap(ft, ram)
    heap.init_heap_pages(0, nr)  # MFN 0 is kept away from the allocator
    return ft, heap


def chunk_set(heap):
    h, o, z = heap.free_chunks()
    return sorted(zip(h.tolist(), o.tolist(), z.tolist(), strict=True))


def test_zones_are_by_address_width():
    assert NR_ZONES == 41
    assert [page_to_zone(m) for m in (0, 1, 2, 3, 4, 0xFFFFF, 0x100000)] == [1, 1, 2, 2, 3, 20, 21]
    m = np.array([0, 1, 2, 3, 4, 7, 8, 0xFFFFF, 0x100000, 2**40 - 1])
    assert zones_of(m).tolist() == [page_to_zone(int(x)) for x in m]


def test_init_fills_every_zone_exactly():
    ft, heap = fresh_heap()
    assert heap.total_avail_pages == NR - 1
    mfns = np.arange(1, NR)
    want = np.bincount(zones_of(mfns), minlength=NR_ZONES)
    assert heap.avail[0].tolist() == want.tolist()
    assert heap.avail[0, 0] == 0  # MEMZONE_XEN is empty on x86-64
    # Every chunk is order-aligned, within one zone, its head records the order.
    for mfn, order, zone in chunk_set(heap):
        assert mfn % (1 << order) == 0 and order <= MAX_ORDER
        assert page_to_zone(mfn) == zone == page_to_zone(mfn + (1 << order) - 1)
        assert int(ft.v[mfn]) == order
    free = (ft.count_info & np.uint64(PGC_state)) == np.uint64(PGC_state_free)
    assert int(free.sum()) == NR - 1 and not free[0]


def test_allocation_takes_the_highest_zone_and_splits():
    ft, heap = fresh_heap()
    mfn = heap.alloc_heap_pages(0)
    assert page_to_zone(mfn) == page_to_zone(NR - 1)
    assert heap.total_avail_pages == NR - 2
    assert int(ft.count_info[mfn]) & PGC_state == 0  # in use now
    # A split leaves one free chunk of every smaller order in that zone.
    orders = {o for m, o, z in chunk_set(heap) if z == page_to_zone(mfn)}
    assert set(range(0, 15)) <= orders


def test_free_merges_buddies_back_to_the_same_free_lists():
    ft, heap = fresh_heap()
    before = chunk_set(heap)
    rng = random.Random(7)
    got = []
    for _ in range(300):
        order = rng.choice([0, 0, 0, 1, 2, 5, 9])
        mfn = heap.alloc_heap_pages(order)
        assert mfn is not None and mfn % (1 << order) == 0
        got.append((mfn, order))
    spans = sorted(got)
    for (a, oa), (b, _) in zip(spans, spans[1:], strict=False):
        assert a + (1 << oa) <= b  # no frame handed out twice
    rng.shuffle(got)
    for mfn, order in got:
        heap.free_heap_pages(mfn, order)
    assert chunk_set(heap) == before
    assert heap.total_avail_pages == NR - 1


def test_failed_allocations_take_nothing():
    ft, heap = fresh_heap()
    before = chunk_set(heap)
    assert heap.alloc_heap_pages(MAX_ORDER) is None  # no 4 GiB chunk in 256 MiB
    assert heap.alloc_domheap_bulk(None, NR) is None  # more than there is
    # All pages below 1 MiB (zone <= 8) are fewer than asked: rolled back.
    assert heap.alloc_domheap_bulk(None, 300, MEMF_bits(20)) is None
    assert chunk_set(heap) == before and heap.total_avail_pages == NR - 1


def test_bulk_allocation_uses_few_chunks_and_respects_memflags():
    ft, heap = fresh_heap()
    mfns = heap.alloc_domheap_bulk(None, 1000)
    assert len(mfns) == len(np.unique(mfns)) == 1000
    assert heap.total_avail_pages == NR - 1 - 1000
    low = heap.alloc_domheap_bulk(None, 16, MEMF_bits(20))
    assert int(low.max()) < (1 << 20) >> 12
    heap.free_runs(np.concatenate((mfns, low)), need_scrub=False)
    assert heap.total_avail_pages == NR - 1


def test_xenheap_pages_are_flagged():
    ft, heap = fresh_heap()
    mfn = heap.alloc_xenheap_pages(2)
    assert [int(ft.count_info[m]) for m in range(mfn, mfn + 4)] == [PGC_xen_heap] * 4
    heap.free_xenheap_pages(mfn, 2)
    assert heap.total_avail_pages == NR - 1


def test_ram_is_sparse_and_scrub_gives_frames_back():
    ram = MachineRAM(64 << 30)  # 64 GiB of address space, nothing resident yet
    assert ram.nr_frames == 1 << 24 and ram.ptr != 0
    assert ram.u64.shape == (8 << 30,)
    ram.write(0x5000, b"xen!")
    assert ram.read(0x5000, 4) == b"xen!" and bytes(ram.page(5)[:4]) == b"xen!"
    ram.page64(7)[3] = 0x1234
    assert ram.read(7 * 4096 + 24, 8) == (0x1234).to_bytes(8, "little")
    assert 0 < ram.resident_bytes() < (16 << 20)
    ram.scrub(5, 3)
    assert ram.read(0x5000, 4) == b"\0\0\0\0" and not ram.page64(7).any()
    assert ram.scrubbed_pages == 3
    with pytest.raises(ValueError):
        ram.read(ram.size - 2, 4)


def test_freeing_scrubs_with_madvise():
    ram = MachineRAM(NR << 12)
    ft, heap = fresh_heap(ram=ram)
    mfns = heap.alloc_domheap_bulk(None, 4)
    for m in mfns.tolist():
        ram.page(m)[:] = 0xAB
    heap.free_runs(mfns, need_scrub=True)
    assert ram.scrubbed_pages == 4 and heap.node_need_scrub == [0]
    assert all(not ram.page(m).any() for m in mfns.tolist())


def test_aligned_chunks():
    assert list(aligned_chunks(1, 8)) == [(1, 0), (2, 1), (4, 2)]
    assert list(aligned_chunks(8, 24)) == [(8, 3), (16, 3)]


class Lines(list):
    def __call__(self, line=""):
        self.append(line)


@pytest.mark.machine(memory=1 << 30, dom0_mem=256 << 20)
def test_keys_m_and_H_agree_with_the_heap(machine):
    heap = machine.heap
    # Boot RAM is scrubbed by the idle scrubber (bootscrub=idle): wait until it is done, so
    # that H has no "unscrubbed pages" line (tests/emu/test_scrub.py covers that line).
    deadline = time.monotonic() + 30
    while heap.node_need_scrub[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert heap.node_need_scrub == [0]
    m = Lines()
    KEY_TABLE["m"].fn(machine, m, ())
    assert m[0] == "Physical memory information:"
    assert m[1] == "    Xen heap: 0kB free"
    zones = [z for z in range(1, NR_ZONES) if heap.avail[0, z]]
    assert m[2:-1] == [f"    heap[{z:02d}]: {int(heap.avail[0, z]) * 4}kB free" for z in zones]
    assert m[-1] == f"    Dom heap: {heap.total_avail_pages * 4}kB free"
    h = Lines()
    KEY_TABLE["H"].fn(machine, h, ())
    assert h[0].startswith("'H' pressed -> dumping heap info (now = ")
    assert h[1:] == [f"heap[node=0][zone={z}] -> {int(heap.avail[0, z])} pages" for z in range(41)]
    assert KEY_TABLE["m"].desc == "memory info" and KEY_TABLE["H"].desc == "dump heap info"
