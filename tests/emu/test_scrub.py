"""Background scrubbing as Xen's bootscrub=idle: freed pages of a dying domain and free RAM
after boot are scrubbed by idle pCPUs; `H` shows the unscrubbed count falling to zero."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from emu.audit import audit_full
from emu.boot import boot_sync
from emu.host import DomainSpec, HostConfig
from emu.machine import Machine
from emu.mm.page_info import PGC_need_scrub
from emu.mm.scrub import IdleScrubber
from keyhandlers import KEY_TABLE


def wait(pred, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def H(m) -> list[str]:
    out: list[str] = []
    KEY_TABLE["H"].fn(m, out.append, ())
    return out


@pytest.fixture
def m():
    machine = boot_sync(Machine(HostConfig(memory=512 << 20, dom0_mem=128 << 20), guests=False))
    yield machine
    machine.shutdown()


def test_boot_ram_is_scrubbed_in_the_background(m):
    heap = m.heap
    assert isinstance(heap.scrubber, IdleScrubber) and heap.scrubber.thread.is_alive()
    assert wait(lambda: heap.node_need_scrub == [0])
    assert not heap.dirty_runs
    assert audit_full(m).ok
    assert not [ln for ln in H(m) if "unscrubbed" in ln]


def test_destroyed_domain_pages_wait_for_an_idle_pcpu(m):
    heap = m.heap
    assert wait(lambda: heap.node_need_scrub == [0])
    gate = threading.Event()  # "is a pCPU idle?" closed: every pCPU busy
    heap.scrubber.some_pcpu_idle = gate.is_set
    dom = m.create_domain(DomainSpec(name="gone", memory=32))
    mfns = m.frames.owned_by(dom.domid)
    xen = list(dom.xenpage_mfns)  # shared_info: a xenheap page, scrubbed when freed too
    m.ram.u64[mfns[0] << 9] = 0xDEADBEEF
    free_before = m.free_pages()
    m.destroy_domain(dom)
    n = int(np.count_nonzero(m.frames.count_info[mfns] & np.uint64(PGC_need_scrub)))
    assert n == mfns.size == 32 << 8
    n += len(xen)
    assert heap.node_need_scrub == [n]
    # Free already (the heap counts dirty free pages), not yet scrubbed.
    assert m.free_pages() - free_before >= n
    assert int(m.ram.u64[mfns[0] << 9]) == 0xDEADBEEF
    assert audit_full(m).ok  # node_need_scrub matches the PGC_need_scrub frames
    h = H(m)
    # xen/common/page_alloc.c:2902 "Node %d has %lu unscrubbed pages", after the heap lines.
    assert h[-1] == f"Node 0 has {n} unscrubbed pages"
    assert re.fullmatch(r"heap\[node=0\]\[zone=40\] -> \d+ pages", h[-2])
    gate.set()  # a pCPU goes idle: the scheduler kicks scrub_free_pages()
    heap.scrubber.kick()
    assert wait(lambda: heap.node_need_scrub == [0])
    assert int(m.ram.u64[mfns[0] << 9]) == 0
    assert not [ln for ln in H(m) if "unscrubbed" in ln]
    assert audit_full(m).ok


def test_an_allocation_scrubs_the_dirty_pages_it_takes(m):
    heap = m.heap
    assert wait(lambda: heap.node_need_scrub == [0])
    heap.scrubber.some_pcpu_idle = lambda: False
    dom = m.create_domain(DomainSpec(name="a", memory=16))
    mfns = m.frames.owned_by(dom.domid)
    m.ram.u64[mfns << 9] = 0x5A5A
    nxen = len(dom.xenpage_mfns)
    m.destroy_domain(dom)
    assert heap.node_need_scrub == [mfns.size + nxen]
    # The next domain takes the same frames (highest free first): scrubbed as it gets them.
    again = m.create_domain(DomainSpec(name="b", memory=16))
    got = m.frames.owned_by(again.domid)
    reused = np.intersect1d(got, mfns)
    assert reused.size and not m.ram.u64[reused << 9].any()
    assert heap.node_need_scrub[0] <= mfns.size + nxen - reused.size
    assert audit_full(m).ok


def test_busy_pcpus_are_left_alone_and_an_idle_one_scrubs():
    """Every pCPU busy: the scrubber waits without looking (a polling thread took the GIL
    from the vCPUs' fault hooks and slowed two busy guests' faults a hundredfold); the
    first pCPU to go idle kicks it (the scheduler's on_idle) and the pages get scrubbed."""
    m = boot_sync(Machine(HostConfig(memory=512 << 20, cpus=2, dom0_mem=128 << 20)))
    try:
        heap = m.heap
        assert wait(lambda: heap.node_need_scrub == [0])
        spin = [m.create_domain(DomainSpec(name=f"s{i}", memory=8, workload="stream:pages=16"))
                for i in range(2)]  # fmt: skip
        assert wait(lambda: all(m.sched.current_on(c) is not None for c in range(2)))
        gone = m.create_domain(DomainSpec(name="gone", memory=32), paused=True)
        m.destroy_domain(gone)
        assert heap.node_need_scrub[0] > 0
        looks = heap.scrubber.looks
        time.sleep(0.5)
        assert heap.node_need_scrub[0] > 0  # nobody idle: nothing scrubbed
        assert heap.scrubber.looks - looks <= 2  # the destroy's kick, no polling
        m.destroy_domain(spin[0])  # a pCPU goes idle
        assert wait(lambda: heap.node_need_scrub == [0])
        assert audit_full(m).ok
    finally:
        m.shutdown()
