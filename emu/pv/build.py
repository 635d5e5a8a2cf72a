"""The 64-bit PV domain builder (libxenguest's xc_dom_* for x86_64, driven by libxl).

`build_pv(machine, dom)` does, for a domain whose memory (gfns 0..N-1) is populated:
parse the kernel (emu/pv/elf.py), lay out and fill, after the kernel, the p2m list,
start_info, the xenstore and console rings, the bootstrap page tables and the boot stack
(xg_dom_core.c xc_dom_build_image, xg_dom_x86.c), write the hypercall page, zero
shared_info with every vCPU's upcall mask set, pin the L4 (validating the tree), and return
the initial vCPU 0 state. Every vaddr the builder places is pfn << 12 (virt_base 0 for
XTF; in general virt_base + pfn << 12).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from emu.pv import elf
from emu.pv.mm import LEVEL_TYPE

P, RW, US, A, D = 0x1, 0x2, 0x4, 0x20, 0x40
L1_PROT, UPPER_PROT = P | RW | A, P | RW | A | D | US  # xg_dom_x86.c:490-496
START_INFO_MAGIC = b"xen-3.0-x86_64"
XENCONSOLE_DISCONNECTED = 1
EXTRA_PAGES = 1 + (512 * 1024) // 4096  # boot stack + 512 KiB padding (alloc_pgtables_pv)


class BuildError(Exception):
    """The build failed; str() is what xl prints (one or more lines)."""


def libxl_failure(first: str, domid: int, step: str = "xc_dom_parse_image failed") -> str:
    return "\n".join(
        [
            first,
            f"libxl: error: libxl_dom.c:589:libxl__build_dom: {step}",
            f"libxl: error: libxl_create.c:1653:domcreate_rebuild_done: Domain {domid}:"
            "cannot (re-)build domain: -3",
        ]
    )


@dataclass
class Layout:
    kernel_pfn: int
    kernel_pages: int
    p2m_pfn: int
    p2m_pages: int
    start_info_pfn: int
    store_pfn: int
    console_pfn: int
    pt_pfn: int
    nr_pt_frames: int
    bootstack_pfn: int
    virt_pgtab_end: int  # bytes from virt_base: [virt_base, virt_base + this) is mapped
    l1_count: int


def count_pgtables(start: int, end: int) -> tuple[int, int, int, int]:
    """Tables (L4, L3, L2, L1) to map [start, end] (end inclusive; xg_dom_x86.c:138-238)."""
    counts = [1]
    for bits in (39, 30, 21):
        mask = (1 << bits) - 1
        counts.append((((end | mask) - (start & ~mask)) >> bits) + 1)
    return tuple(counts)  # type: ignore[return-value]


def layout(parms: elf.ElfDomParms, total_pages: int) -> Layout:
    vb = parms.virt_base
    kpfn = (parms.virt_kstart - vb) >> 12
    kpages = ((parms.virt_kend - vb + 4095) >> 12) - kpfn
    alloc = kpfn + kpages
    p2m_pages = (total_pages * 8 + 4095) >> 12
    p2m_pfn, alloc = alloc, alloc + p2m_pages
    si, store, cons = alloc, alloc + 1, alloc + 2
    alloc += 3
    pages = EXTRA_PAGES
    while True:  # alloc_pgtables_pv()
        try_end = (vb + alloc * 4096 + pages * 4096) | ((1 << 22) - 1)
        counts = count_pgtables(vb, try_end)
        pages = sum(counts) + EXTRA_PAGES
        if vb + alloc * 4096 + pages * 4096 <= try_end + 1:
            break
    pt_pfn = alloc
    nr_pt = sum(counts)
    end_pfn = (try_end + 1 - vb) >> 12
    if end_pfn >= total_pages:
        raise BuildError(
            "xc: error: panic: xg_dom_x86.c:155: count_pgtables: not enough memory for "
            f"initial mapping ({end_pfn:#x} > {total_pages:#x}): Out of memory"
        )
    return Layout(
        kpfn, kpages, p2m_pfn, p2m_pages, si, store, cons, pt_pfn, nr_pt,
        pt_pfn + nr_pt, try_end + 1 - vb, counts[3],
    )  # fmt: skip


def hypercall_page() -> bytes:
    """pv/hypercall.c:120-152 (64-bit PV): 0xcc fill, 32-byte stubs, iret (23) special."""
    page = bytearray(b"\xcc" * 4096)
    for i in range(128):
        if i == 23:
            stub = b"\x51\x41\x53\x50\xb8" + struct.pack("<I", i) + b"\x0f\x05"
        else:
            stub = b"\x51\x41\x53\xb8" + struct.pack("<I", i) + b"\x0f\x05\x41\x5b\x59\xc3"
        page[i * 32 : i * 32 + len(stub)] = stub
    return bytes(page)


def read_kernel(path: str | None, domid: int) -> bytes:
    if not path:
        raise BuildError(
            libxl_failure(
                "xc: error: panic: xg_dom_core.c:205: failed to open file '': "
                "No such file or directory: Internal error",
                domid,
                "xc_dom_kernel_file failed: No such file or directory",
            ).replace("libxl_dom.c:589:libxl__build_dom", "libxl_dom.c:664:libxl__build_pv")
        )
    try:
        with open(path, "rb") as f:
            return f.read(64 << 20)
    except OSError as e:
        raise BuildError(
            "\n".join(
                [
                    f"xc: error: panic: xg_dom_core.c:205: failed to open file '{path}': "
                    f"{e.strerror}: Internal error",
                    f"libxl: error: libxl_dom.c:664:libxl__build_pv: xc_dom_kernel_file failed: "
                    f"{e.strerror}",
                    f"libxl: error: libxl_create.c:1653:domcreate_rebuild_done: Domain {domid}:"
                    "cannot (re-)build domain: -3",
                ]
            )
        ) from None


def parse(blob: bytes, domid: int) -> elf.ElfDomParms:
    try:
        parms = elf.parse_kernel(blob)
        elf.check_domu(parms)
    except elf.ElfRefused:
        raise BuildError(libxl_failure(elf.NO_LOADER, domid)) from None
    return parms


def build_pv(machine, dom, blob: bytes, cmdline: str, store_port: int, console_port: int):
    """Lay out and fill the guest; returns (layout, parms). Pins the L4 (BuildError if the
    tables do not validate)."""
    total = len(dom.p2m)
    parms = parse(blob, dom.domid)
    lay = layout(parms, total)
    p2m = dom.p2m
    ram = machine.ram

    def mfn(pfn: int) -> int:
        return int(p2m[pfn])

    def zero(pfn: int, n: int) -> None:
        for i in range(n):
            ram.page(mfn(pfn + i))[:] = 0

    # Kernel: each segment at dest_base + paddr - pstart, the bss tail zeroed.
    zero(lay.kernel_pfn, lay.kernel_pages)
    kbase = lay.kernel_pfn << 12
    for seg in parms.segments:
        data = blob[seg.offset : seg.offset + seg.filesz]
        off = kbase + seg.paddr - parms.pstart
        _write_pfn_bytes(ram, p2m, off, data)
    # p2m list (as u64; holes ~0).
    zero(lay.p2m_pfn, lay.p2m_pages)
    _write_pfn_bytes(ram, p2m, lay.p2m_pfn << 12, p2m.astype(np.uint64).tobytes())
    zero(lay.start_info_pfn, 3)
    ram.u8[(mfn(lay.console_pfn) << 12) + 3088] = XENCONSOLE_DISCONNECTED
    zero(lay.pt_pfn, lay.nr_pt_frames + 1)  # + the boot stack
    _setup_pgtables(machine, dom, lay, parms.virt_base)
    # start_info (xg_dom_x86.c:801-850)
    si = struct.pack(
        "<32sQQI4xQI4xQI4xQQQQQ",
        START_INFO_MAGIC, total, dom.pv.shared_info_mfn << 12, 0,
        mfn(lay.store_pfn), store_port, mfn(lay.console_pfn), console_port,
        parms.virt_base + (lay.pt_pfn << 12), lay.nr_pt_frames,
        parms.virt_base + (lay.p2m_pfn << 12), 0, 0,
    )  # fmt: skip
    cmd = cmdline.encode("latin-1", "replace")[:1023]
    ram.write(mfn(lay.start_info_pfn) << 12, si + cmd)
    # The hypercall page (XEN_DOMCTL_hypercall_init).
    if parms.virt_hypercall != elf.UNSET:
        hpfn = (parms.virt_hypercall - parms.virt_base) >> 12
        ram.write(mfn(hpfn) << 12, hypercall_page())
    # shared_info: zeroed, every vcpu_info's upcall mask set (xg_dom_x86.c:865-876).
    sh = dom.pv.shared_info_mfn
    ram.page(sh)[:] = 0
    for i in range(32):
        ram.u8[(sh << 12) + i * 64 + 1] = 1
    # Pin the L4 (MMUEXT_PIN_L4_TABLE): validates the whole tree.
    l4 = mfn(lay.pt_pfn)
    rc = machine.pv.mm.get_page_and_type(l4, LEVEL_TYPE[4], dom)
    if rc:
        raise BuildError(
            f"xc: error: panic: xg_dom_x86.c:1693: pin_table: pin_table failed "
            f"(pfn {lay.pt_pfn:#x}, mfn {l4:#x}, level 4): Internal error"
        )
    from emu.mm.page_info import PGT_pinned

    machine.frames.type_info[l4] = int(machine.frames.type_info[l4]) | PGT_pinned
    return lay, parms


def _write_pfn_bytes(ram, p2m, vaddr: int, data: bytes) -> None:
    """Write `data` at guest-physical `vaddr` (pfn-contiguous, mfn-scattered)."""
    off = 0
    while off < len(data):
        pa = vaddr + off
        chunk = min(len(data) - off, 4096 - (pa & 0xFFF))
        ram.write((int(p2m[pa >> 12]) << 12) | (pa & 0xFFF), data[off : off + chunk])
        off += chunk


def _setup_pgtables(machine, dom, lay: Layout, vb: int) -> None:
    """setup_pgtables_pv() for one mapping of [virt_base, virt_pgtab_end): L1 0x23
    (page-table frames 0x21), upper levels 0x67; L1 entry i maps pfn i."""
    p2m, u64 = dom.p2m, machine.ram.u64
    end = vb + lay.virt_pgtab_end - 1
    n4, n3, n2, n1 = count_pgtables(vb, end)
    l4 = lay.pt_pfn
    tables = {3: list(range(l4 + 1, l4 + 1 + n3))}
    tables[2] = list(range(tables[3][-1] + 1, tables[3][-1] + 1 + n2))
    tables[1] = list(range(tables[2][-1] + 1, tables[2][-1] + 1 + n1))
    tables[4] = [l4]
    pt_lo, pt_hi = lay.pt_pfn, lay.pt_pfn + lay.nr_pt_frames

    def put(level: int, va: int, entry: int) -> None:
        shift = 12 + 9 * (level - 1)
        base = 0 if level == 4 else vb & ~((1 << (shift + 9)) - 1)
        idx = (va - base) >> shift
        if level == 4:
            idx &= 511
        pfns = tables[level]
        u64[(int(p2m[pfns[idx >> 9]]) << 9) + (idx & 511)] = entry

    for level in (4, 3, 2):
        shift = 12 + 9 * (level - 1)
        base = vb & ~((1 << shift) - 1)
        for i, t in enumerate(tables[level - 1]):
            put(level, base + (i << shift), (int(p2m[t]) << 12) | UPPER_PROT)
    for pfn in range(lay.virt_pgtab_end >> 12):
        prot = L1_PROT & ~RW if pt_lo <= pfn < pt_hi else L1_PROT
        put(1, vb + (pfn << 12), (int(p2m[pfn]) << 12) | prot)
