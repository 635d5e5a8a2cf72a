"""Keys `U`/`Z` for a PV guest (emu/access/pv.py): the A/D bits of the guest's own L1 tables,
found through the frame table, against pages the guest provably touched; `Z` clears them in
the guest's tables and a blocked guest then shows window=0; idle ages move on per `Z`.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from guest_helpers import wait_for
from pv_helpers import small_machine

from emu.access import pv
from emu.access.scan import reset_window, scan_domain
from emu.asm import assemble
from emu.host import DomainSpec
from emu.mm.page_info import PGT_l1_page_table, PGT_type_mask, PGT_validated
from emu.pv.elf import write_pv_elf
from keyhandlers.access import idle_line, parse_report, reset_accessed_window, scan_accessed_pages

pytestmark = pytest.mark.timeout(120)

HC = 0x101000  # write_pv_elf's hypercall page
FLAG, START = 0x100800, 0x100808  # in the code page (pfn 0x100): written by the test
# Spin until FLAG (pages to touch) is set, read FLAG pages from START, then block forever.
GUEST = f"""
wait:
    mov rcx, qword ptr [{FLAG}]
    test rcx, rcx
    jz wait
    mov rsi, qword ptr [{START}]
touch:
    mov al, byte ptr [rsi]
    add rsi, 0x1000
    dec rcx
    jnz touch
block:
    mov rdi, 1
    xor esi, esi
    mov rax, {HC + 32 * 29}
    call rax
    jmp block
.org 0x800
    .quad 0, 0
"""


def _ram_write_u64(m, dom, va: int, value: int) -> None:
    mfn = int(dom.p2m[va >> 12])
    m.ram.u64[(mfn << 9) + ((va & 0xFFF) >> 3)] = value


def _u(m, *args) -> dict:
    out: list[str] = []
    scan_accessed_pages(m, out.append, args)
    return parse_report("\n".join("(XEN) " + x for x in out))


def test_pv_guest_touching_n_pages(tmp_path):
    m, serial = small_machine()
    try:
        path = tmp_path / "k"
        path.write_bytes(write_pv_elf(assemble(GUEST, 0x100000, 1 << 20)))
        d = m.create_domain(DomainSpec(name="pvu", memory=64, type="pv", kernel=str(path)))
        lay = d.pv.layout
        mapped = lay.virt_pgtab_end >> 12  # pfns 0.. mapped by the builder, A preset
        pages = len(d.p2m)
        # The frame-table pass finds exactly the builder's L1 tables (validated, owned).
        l1 = pv.l1_frames(m, d)
        ti = m.frames.type_info[l1].astype(np.uint64)
        assert l1.size == lay.l1_count
        assert ((ti & np.uint64(PGT_type_mask)) == np.uint64(PGT_l1_page_table)).all()
        assert ((ti & np.uint64(PGT_validated)) != 0).all()
        assert wait_for(lambda: d.vcpus[0].cpu_time_ns > 0, timeout=30), "".join(serial)
        time.sleep(0.2)  # spinning on FLAG
        assert d.domid in m.domains, "".join(serial)
        # xg_dom_x86.c sets A in every bootstrap L1 entry: that is what the tables say.
        r = _u(m, f"d{d.domid}")[d.domid]
        assert (r["pages"], r["accessed"], r["window"]) == (pages, mapped, mapped)
        assert r["idle"] == [mapped, 0, 0, 0, 0, 0, pages - mapped]
        out: list[str] = []
        reset_accessed_window(m, out.append, (f"d{d.domid}",))
        assert out == [
            f"d{d.domid} window reset: A cleared in {lay.l1_count} guest L1 table"
            f"{'s' * (lay.l1_count != 1)}, 1 vCPU TLB flushed"
        ]
        n, first = 37, lay.bootstack_pfn + 5
        assert first + n <= mapped
        _ram_write_u64(m, d, START, first << 12)
        _ram_write_u64(m, d, FLAG, n)
        assert wait_for(lambda: d.vcpus[0].blocked, timeout=30)
        # The window: the N pages, plus the code page (spin, FLAG), the hypercall page and
        # the boot stack (the stub's pushes and `call`).
        s = scan_domain(m, d)
        touched = set(range(first, first + n)) | {0x100, 0x101, lay.bootstack_pfn}
        assert set(np.flatnonzero(s.window).tolist()) == touched
        assert set(np.flatnonzero(s.dirty).tolist()) == {lay.bootstack_pfn}
        assert s.nr_accessed == mapped
        assert idle_line(s) == (
            f"d{d.domid} idle 0={n + 3} 1={mapped - n - 3} 2-3=0 4-7=0 8-15=0 16+=0 "
            f"never={pages - mapped}"
        )
        reset_window(m, d)
        time.sleep(0.3)  # blocked: nothing runs
        r = _u(m, f"d{d.domid}")[d.domid]
        assert (r["accessed"], r["dirty"], r["window"]) == (mapped, 1, 0)
        assert r["idle"] == [0, n + 3, mapped - n - 3, 0, 0, 0, pages - mapped]
        # The guest's own entries: A is clear in every L1 entry, D is kept.
        frames = m.ram.u64.reshape(-1, 512)[l1]
        assert not (frames & np.uint64(0x20)).any()
        assert int(np.count_nonzero(frames & np.uint64(0x40))) == 1
        # U without arguments lists the PV domU (and not dom0).
        assert sorted(_u(m)) == [d.domid]
    finally:
        m.shutdown()


UNMAP = f"""
wait:
    mov rcx, qword ptr [{FLAG}]
    test rcx, rcx
    jz wait
    mov rdi, qword ptr [{START}]
    mov al, byte ptr [rdi]
    xor esi, esi
    mov rdx, 2
    mov rax, {HC + 32 * 14}
    call rax
    mov qword ptr [{FLAG}], rax
block:
    mov rdi, 1
    xor esi, esi
    mov rax, {HC + 32 * 29}
    call rax
    jmp block
.org 0x800
    .quad 0, 0
"""


def test_pv_access_survives_the_unmapping_of_its_entry(tmp_path):
    """A page read and then unmapped (update_va_mapping to 0) left no A bit in any L1
    entry: the record kept it when the entry was replaced (emu/pv/mm.py mod_entry ->
    emu/access/record.py fold_pte), so U still counts it in the window."""
    m, serial = small_machine()
    try:
        path = tmp_path / "k"
        path.write_bytes(write_pv_elf(assemble(UNMAP, 0x100000, 1 << 20)))
        d = m.create_domain(DomainSpec(name="unmap", memory=64, type="pv", kernel=str(path)))
        lay = d.pv.layout
        page = lay.bootstack_pfn + 9
        assert wait_for(lambda: d.vcpus[0].cpu_time_ns > 0, timeout=30), "".join(serial)
        reset_window(m, d)
        _ram_write_u64(m, d, START, page << 12)
        _ram_write_u64(m, d, FLAG, 1)
        assert wait_for(lambda: d.vcpus[0].blocked, timeout=30), "".join(serial)
        mfn = int(d.p2m[page])
        rows = m.ram.u64.reshape(-1, 512)[pv.l1_frames(m, d)]
        assert not ((rows >> np.uint64(12)) & np.uint64(0xFFFFFFFFFF) == mfn).any()
        assert int(m.ram.u64[(int(d.p2m[0x100]) << 9) + 0x100]) == 0  # rc of the hypercall
        s = scan_domain(m, d)
        assert s.window[page] and s.accessed[page]
        assert set(np.flatnonzero(s.window).tolist()) == {page, 0x100, 0x101, lay.bootstack_pfn}
    finally:
        m.shutdown()
