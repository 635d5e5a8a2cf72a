"""Shadow paging with GUEST's real vCPUs and scheduler (emu/cpu/vcpu.py, emu/hvm.py): exact
A/D after a touch workload, `S` while guests run, a CPL 3 guest writing its own PTEs."""

from __future__ import annotations

import numpy as np
import pytest
from shadow_harness import ARENA_GFN, A, D

from emu.audit import audit
from emu.boot import boot_sync

pytestmark = pytest.mark.timeout(90)


def _guest_leaf(m, dom, va: int) -> int:
    """The guest's own L1 entry for `va`, walked from its CR3 through its P2M."""
    table = (dom.vcpus[0].guest_cr3 & 0x000FFFFFFFFFF000) >> 12
    for shift in (39, 30, 21, 12):
        e = int(m.ram.u64[(int(dom.p2m[table]) << 9) | ((va >> shift) & 511)])
        if shift == 12:
            return e
        table = (e & 0x000FFFFFFFFFF000) >> 12
    raise AssertionError


def _wait_for(pred, timeout: float = 30.0) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.timeout(90)
def test_real_guests_touch_exactly_and_run_on_after_s():
    """With GUEST's vCPUs and scheduler: exact A/D after a touch, `S`, guests run on."""
    from emu.host import DomainSpec, HostConfig
    from emu.machine import Machine
    from keyhandlers.shadow import shadow_blow_all_tables

    m = Machine(HostConfig(memory=512 << 20, cpus=2, dom0_mem=128 << 20))
    boot_sync(m)
    try:
        d1 = m.create_domain(
            DomainSpec(name="t1", memory=32, workload="touch:pages=300,stride=2,write=1")
        )
        d2 = m.create_domain(DomainSpec(name="t2", memory=32, vcpus=2, workload="random:ws=64"))
        assert _wait_for(lambda: b"(d1) touch done 300" in m.console.ring.read())
        with m.quiesce(d1):
            leaves = [_guest_leaf(m, d1, g << 12) for g in range(ARENA_GFN, ARENA_GFN + 700)]
            arena = m.access.domain_arrays(d1)
        want = {ARENA_GFN + 2 * i for i in range(300)}
        got_a = {ARENA_GFN + i for i, e in enumerate(leaves) if e & A}
        got_d = {ARENA_GFN + i for i, e in enumerate(leaves) if e & D}
        assert got_a == want and got_d == want
        assert {int(x) for x in np.flatnonzero(arena["accessed"][ARENA_GFN:])} == {
            g - ARENA_GFN for g in want
        }
        with m.quiesce(None):  # d2 runs: audit only with every vCPU held
            assert audit(m) == []
        f0 = m.perfc.total("shadow_fault")
        lines: list[str] = []
        with m.quiesce(None):  # (the guests would re-fault at once otherwise)
            shadow_blow_all_tables(m, lines.append, ())
            for d in (d1, d2):
                sd = d.paging
                assert sd.free_pages == sd.total_pages - len(set(sd.toplevel.values()))
            assert audit(m) == []
        # d2's random workload re-faults its working set and keeps running.
        assert _wait_for(lambda: m.perfc.total("shadow_fault") > f0 + 32)
        with m.quiesce(None):
            assert audit(m) == []
            r = m.access.domain_arrays(d2)
            assert 0 < r["accessed"][ARENA_GFN:].sum() <= 64
            assert r["accessed"][ARENA_GFN + 64 :].sum() == 0
    finally:
        m.shutdown()


ASM_PT_WRITER = """
    mov rax, cr3
    mov rbx, 0x000FFFFFFFFFF000
    and rax, rbx
    mov rcx, qword ptr [rax]
    and rcx, rbx
    mov rcx, qword ptr [rcx]
    and rcx, rbx
    mov rcx, qword ptr [rcx]
    and rcx, rbx
    mov rdx, 0x101000
    mov rsi, 0x4b4f
    mov qword ptr [rdx], rsi
    mov rdx, 0x100000
    mov rsi, 0x4142
    mov qword ptr [rdx], rsi
    lea rdi, [rcx + 0x800]
    mov rsi, 0x8000000000101003
    mov qword ptr [rdi], rsi
    mov rsi, qword ptr [rdx]
    mov al, sil
    out 0xe9, al
    shr rsi, 8
    mov al, sil
    out 0xe9, al
    mov rsi, -0x1000
    add qword ptr [rdi], rsi
    mov rsi, qword ptr [rdx]
    mov al, sil
    out 0xe9, al
    shr rsi, 8
    mov al, sil
    out 0xe9, al
    mov al, 10
    out 0xe9, al
    sti
spin:
    hlt
    jmp spin
"""


@pytest.mark.timeout(60)
def test_real_guest_rewrites_its_own_pte_at_cpl3(tmp_path):
    """An `asm:` guest (GUEST's vCPU, CPL 3) remaps a page by writing its own L1 entry:
    once with a plain mov (emulated), once with an add (single-stepped)."""
    from emu.host import DomainSpec, HostConfig
    from emu.machine import Machine

    src = tmp_path / "ptw.S"
    src.write_text(ASM_PT_WRITER)
    m = Machine(HostConfig(memory=512 << 20, cpus=2, dom0_mem=128 << 20))
    boot_sync(m)
    try:
        d = m.create_domain(DomainSpec(name="ptw", memory=8, workload=f"asm:{src}"))
        assert _wait_for(lambda: b"(d1) OKBA" in m.console.ring.read(), 20)
        sd = d.paging
        assert sd.pt_writes == {"emulated": 1, "single-stepped": 1}
        with m.quiesce(d):
            assert _guest_leaf(m, d, 0x100000) & ~(A | D) == 0x8000000000100003
            assert audit(m) == []
    finally:
        m.shutdown()


def test_balloon_and_destroy_while_guests_run():
    """mem-set down (from this thread) while a random workload runs: the shadows of the
    departing frames go first, under quiesce; the guest runs on; destroy returns the pool."""
    from emu.host import DomainSpec, HostConfig
    from emu.machine import Machine

    m = Machine(HostConfig(memory=512 << 20, cpus=2, dom0_mem=128 << 20))
    boot_sync(m)
    try:
        d = m.create_domain(DomainSpec(name="bal", memory=16, vcpus=2, workload="random:ws=1500"))
        assert _wait_for(lambda: m.perfc.total("shadow_fault") > 1000)
        avail = m.heap.total_avail_pages
        for _ in range(5):
            m.set_target(d, d.tot_pages - 200)
            with m.quiesce(d):
                assert audit(m) == []
                r = m.access.domain_arrays(d)
                assert r["accessed"][ARENA_GFN + 1500 :].sum() == 0
            t0 = d.cpu_time()
            assert _wait_for(lambda t0=t0: d.cpu_time() > t0 + 0.01)  # runs on
        assert d.domid in m.domains and d.paging.crash_reason is None
        assert m.heap.total_avail_pages == avail + 1000
        pool = d.paging.total_pages
        m.destroy_domain(d)
        assert d.paging.total_pages == 0
        assert m.heap.total_avail_pages >= avail + 1000 + pool
        assert audit(m) == []
    finally:
        m.shutdown()
