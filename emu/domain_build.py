"""The guest builder: lays out a domU's memory (docs/contract.md) before its vCPUs first run.

Writes, into the domain's own frames (through its P2M): the start-info page, the guest
kernel (emu/guest/kernel.S), an `asm:` user program (both assembled by emu/asm.py), and the
guest's own 4-level page tables identity-mapping every gfn with 4 KiB pages (VA ==
guest-physical). Those are hypervisor writes: no guest A/D bit and no access record is set.
Kernel text and the user program are executable; every other page is NX. Guest PTEs start
with A and D clear, so the guest's first access to each page is visible to the shadow code.

`asm:PATH` environment (the entry point documented for users, also in README.md):
    entry     USER_ENTRY = 0x20000, every vCPU, CPL 3, 64-bit, paging on (identity map)
    rdi       vCPU id;  rsi: start-info page VA (0; offsets in emu/workload.py)
    rsp       top of the vCPU's own stack page (0x11000 + 0x1000 * id), 4 KiB
    output    `out 0xe9, al` prints a byte; a line appears as `(dN) text`
    memory    gfns 0x100.. (the arena) are free for the program; its code may be 128 KiB
    traps     privileged instructions trap to the hypervisor (see emu/cpu/priv_op.py); with no
              IDT (`lidt`), any exception is a triple fault and the domain crashes
    hypercalls `syscall` with rax = number (emu/cpu/priv_op.py)
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from emu import asm
from emu import workload as W
from emu.mm.memory import decrease_reservation, populate_physmap
from emu.mm.page import INVALID_MFN

P, RW, NX = 0x1, 0x2, 1 << 63
KERNEL_SOURCE = Path(__file__).parent / "guest" / "kernel.S"


@functools.lru_cache(maxsize=1)
def kernel_image() -> bytes:
    """The guest kernel, assembled once per process (emu/asm.py: GNU as in a child)."""
    return asm.assemble(KERNEL_SOURCE.read_bytes(), W.KERNEL_GFN << 12, W.KERNEL_PAGES << 12)


def _mfns(dom, gfns: np.ndarray) -> np.ndarray:
    mfns = dom.p2m[gfns]
    if np.any(mfns == INVALID_MFN):
        raise RuntimeError(f"d{dom.domid}: guest builder found a hole in the P2M")
    return mfns.astype(np.int64)


def _write_gfn(machine, dom, gfn: int, data: bytes) -> None:
    for off in range(0, len(data), 4096):
        mfn = int(_mfns(dom, np.array([gfn + off // 4096]))[0])
        machine.ram.write(mfn << 12, data[off : off + 4096])


def build_page_tables(machine, dom, lay: W.GuestLayout, exec_gfns: np.ndarray) -> None:
    """Identity map gfns 0..nr_pages-1 at VA == gfn << 12 (vectorised: one numpy scatter
    per level)."""
    n = lay.nr_pages
    n1 = -(-n // 512)
    n2 = -(-n1 // 512)
    n3 = -(-n2 // 512)
    base = lay.pt_start
    l4 = base
    l3s = np.arange(base + 1, base + 1 + n3)
    l2s = np.arange(l3s[-1] + 1, l3s[-1] + 1 + n2)
    l1s = np.arange(l2s[-1] + 1, l2s[-1] + 1 + n1)
    assert l1s[-1] == base + lay.pt_pages - 1
    u64 = machine.ram.u64
    ar = np.arange(512, dtype=np.int64)

    def fill(table_gfns: np.ndarray, entries: np.ndarray) -> None:
        padded = np.zeros(len(table_gfns) * 512, dtype=np.uint64)
        padded[: len(entries)] = entries
        idx = (_mfns(dom, table_gfns)[:, None] << 9) + ar
        u64[idx.ravel()] = padded

    gfns = np.arange(n, dtype=np.uint64)
    leaf = (gfns << np.uint64(12)) | np.uint64(P | RW | NX)
    leaf[exec_gfns] &= ~np.uint64(NX)
    fill(l1s, leaf)
    fill(l2s, (l1s.astype(np.uint64) << np.uint64(12)) | np.uint64(P | RW))
    fill(l3s, (l2s.astype(np.uint64) << np.uint64(12)) | np.uint64(P | RW))
    fill(np.array([l4]), (l3s.astype(np.uint64) << np.uint64(12)) | np.uint64(P | RW))


def make_shinfo_hole(machine, dom) -> None:
    """Xen's HVM builder lays RAM around holes (tools/libs/guest/xg_dom_x86.c meminit_hvm);
    ours has one, at SHINFO_GFN, where the kernel maps shared_info with
    XENMEM_add_to_physmap (which would free a RAM page there, xen/arch/x86/mm/p2m.c:2082
    xenmem_add_to_physmap_one). The page populated there moves to the first gfn above RAM,
    so the domain keeps exactly `memory` pages."""
    if dom.p2m[W.SHINFO_GFN] == INVALID_MFN:
        return
    top = len(dom.p2m)
    decrease_reservation(machine, dom, np.array([W.SHINFO_GFN]))
    if populate_physmap(machine, dom, np.array([top])) is None:
        raise RuntimeError(f"d{dom.domid}: no frame for the guest's last gfn")


def build_guest(machine, dom, w: W.Workload) -> W.GuestLayout:
    """Lay the guest out in its frames; sets `dom.reserved_gfns`. Returns the layout.

    `w` comes from emu.workload.check_workload(): an `asm:` program is already assembled.
    """
    make_shinfo_hole(machine, dom)
    n = len(dom.p2m)
    lay = W.guest_layout(n)
    # Everything the builder wrote starts from zeroed frames (populate scrubbed them).
    info = np.zeros(512, dtype=np.uint64)
    p0, p1, p2, p3 = w.start_params()
    fields = {
        W.START_MAGIC: W.START_INFO_MAGIC,
        W.START_NR_PAGES: n,
        W.START_ARENA_START: lay.arena_start,
        W.START_ARENA_END: lay.arena_end,
        W.START_KIND: w.code,
        W.START_P0: p0,
        W.START_P1: p1,
        W.START_P2: p2,
        W.START_P3: p3,
        W.START_NR_VCPUS: len(dom.vcpus),
        W.START_DOMID: dom.domid,
        W.START_PT_START: lay.pt_start,
        W.START_PT_PAGES: lay.pt_pages,
        W.START_HYPERCALL_PAGE: W.HYPERCALL_PAGE,
        W.START_BALLOON_FLOOR: w.balloon_floor(lay.arena_start),
    }
    for off, val in fields.items():
        info[off // 8] = val
    _write_gfn(machine, dom, 0, info.tobytes())
    _write_gfn(machine, dom, W.KERNEL_GFN, kernel_image())
    exec_gfns = [np.arange(W.KERNEL_GFN, W.KERNEL_GFN + W.KERNEL_PAGES), [W.HYPERCALL_GFN]]
    if w.kind == "asm":
        if w.image is None:  # check_workload() assembles; the builder never does
            raise RuntimeError(f"d{dom.domid}: asm workload built before it was assembled")
        _write_gfn(machine, dom, W.USER_GFN, w.image)
        exec_gfns.append(np.arange(W.USER_GFN, W.USER_GFN + W.USER_PAGES))
    build_page_tables(machine, dom, lay, np.concatenate(exec_gfns))
    reserved = set(range(W.ARENA_START))
    reserved.update(range(lay.pt_start, lay.pt_start + lay.pt_pages))
    reserved.update(w.arena_gfns(lay.arena_start))
    dom.reserved_gfns = reserved
    return lay


def guest_pte_flags(machine, dom, gfns) -> np.ndarray:
    """The guest's own L1 entries for `gfns` (identity map), read from RAM (tests, keys)."""
    lay = dom.hvm.layout
    n1 = -(-lay.nr_pages // 512)
    n2 = -(-n1 // 512)
    n3 = -(-n2 // 512)
    first_l1 = lay.pt_start + 1 + n3 + n2
    gfns = np.asarray(gfns, dtype=np.int64)
    l1_gfns = first_l1 + (gfns >> 9)
    idx = (_mfns(dom, l1_gfns) << 9) + (gfns & 511)
    return machine.ram.u64[idx]
