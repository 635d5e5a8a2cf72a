"""Xen's own frames that every 64-bit PV guest's L4 refers to (asm/config.h's layout).

Machine-wide (built once, from the Xen heap):
- the read-only M2P at L4 slot 256 (RO_MPT_VIRT_START 0xffff800000000000), user-readable, as
  Xen maps it into every PV L4 (x86_64/mm.c; mm.c:1662-1665): `machine.m2p` itself lives
  in the M2P frames at the top of RAM, so the guest reads the live table;
- the reserved GDT page (desc.c boot_gdt): selectors 0xe008..0xe033, entry 7168 up;
- a zero page, mapped read-only where a vCPU's GDT has no guest frame (pv_destroy_gdt()).

Per domain (slot 260, PERDOMAIN_VIRT_START 0xffff820000000000, supervisor-only): an L3, an
L2 and the L1s of the GDT/LDT area, 128 KiB per vCPU (GDT_LDT_VCPU_VA_SHIFT 17): 14 GDT
frames, the reserved GDT page, and the page holding the `iretq` through which Xen first
enters the vCPU at CPL 3 (the frame it pops sits in the same page).
"""

from __future__ import annotations

import struct

P, RW, US, A, D = 0x1, 0x2, 0x4, 0x20, 0x40
NX = 1 << 63
RO_MPT_SLOT, PERDOMAIN_SLOT = 256, 260
RO_MPT_VIRT_START = 0xFFFF800000000000
PERDOMAIN_VIRT_START = 0xFFFF820000000000
GDT_LDT_VCPU_VA_SHIFT = 17
FIRST_RESERVED_GDT_PAGE = 14
FIRST_RESERVED_GDT_ENTRY = FIRST_RESERVED_GDT_PAGE * 512
LAST_RESERVED_GDT_BYTE = (FIRST_RESERVED_GDT_PAGE + 1) * 4096 - 1
ENTRY_PAGE = 15  # within a vCPU's GDT area: Xen's entry trampoline
ENTRY_FRAME_OFF = 0x800
BOOT_GDT = {  # desc.c:31-56, selector -> descriptor
    0xE008: 0x00AF9B000000FFFF,
    0xE010: 0x00CF93000000FFFF,
    0xE023: 0x00CFFB000000FFFF,
    0xE02B: 0x00CFF3000000FFFF,
    0xE033: 0x00AFFB000000FFFF,
}
VCPUS_PER_L1 = 512 >> (GDT_LDT_VCPU_VA_SHIFT - 12)


def gdt_va(vcpu_id: int) -> int:
    return PERDOMAIN_VIRT_START + (vcpu_id << GDT_LDT_VCPU_VA_SHIFT)


class XenFrames:
    """The machine-wide frames (see the module docstring)."""

    def __init__(self, machine) -> None:
        self.machine = machine
        ram = machine.ram
        start, end = next((s, e) for s, e, what in machine.xen_ranges if what == "M2P table")
        nr = machine.ram.nr_frames
        # machine.m2p becomes a view of the M2P frames: the guest-visible table.
        view = ram.u64[start << 9 : (start << 9) + nr]
        view[:] = machine.m2p
        machine.m2p = view
        self.m2p_start, self.m2p_frames = start, end - start
        self.owned: list[int] = []
        self.gdt_page = self._alloc()
        for sel, desc in BOOT_GDT.items():
            ram.write((self.gdt_page << 12) + (sel & 0xFF8), struct.pack("<Q", desc))
        self.zero_page = self._alloc()
        self.m2p_l3 = self._map_m2p()

    def _alloc(self) -> int:
        mfn = self.machine.heap.alloc_xenheap_pages(0)
        if mfn is None:
            raise RuntimeError("no Xen heap page for PV guest support")
        self.machine.ram.page(mfn)[:] = 0
        self.owned.append(mfn)
        return mfn

    def _map_m2p(self) -> int:
        """L3 -> L2 -> L1s -> the M2P frames, read-only, user, NX."""
        u64 = self.machine.ram.u64
        l3 = self._alloc()
        nl1 = (self.m2p_frames + 511) // 512
        l2s: list[int] = []
        for i in range(nl1):
            if i % 512 == 0:
                l2s.append(self._alloc())
                u64[(l3 << 9) + len(l2s) - 1] = (l2s[-1] << 12) | P | US | A
            l1 = self._alloc()
            u64[(l2s[-1] << 9) + i % 512] = (l1 << 12) | P | US | A
            first = self.m2p_start + i * 512
            n = min(512, self.m2p_start + self.m2p_frames - first)
            for j in range(n):
                u64[(l1 << 9) + j] = ((first + j) << 12) | P | US | A | NX
        return l3

    def l4_slots(self, area) -> dict[int, int]:
        """init_xen_l4_slots() for a PV L4 of a domain whose per-domain area is `area`."""
        return {
            RO_MPT_SLOT: (self.m2p_l3 << 12) | P | US | A,
            PERDOMAIN_SLOT: (area.l3 << 12) | P | RW | A | D,
        }


class PerDomainArea:
    """A domain's slot-260 tables and its vCPUs' GDT/entry pages (freed with the domain)."""

    def __init__(self, machine, xen: XenFrames, nr_vcpus: int) -> None:
        self.machine = machine
        self.xen = xen
        self.frames: list[int] = []
        u64 = machine.ram.u64
        self.l3 = self._alloc()
        self.l2 = self._alloc()
        u64[self.l3 << 9] = (self.l2 << 12) | P | RW | A | D
        self.l1s: list[int] = []
        self.entry_pages: list[int] = []
        for v in range(nr_vcpus):
            if v % VCPUS_PER_L1 == 0:
                l1 = self._alloc()
                u64[(self.l2 << 9) + len(self.l1s)] = (l1 << 12) | P | RW | A | D
                self.l1s.append(l1)
            for page in range(FIRST_RESERVED_GDT_PAGE):
                self.set_gdt_frame(v, page, None)
            self._set(v, FIRST_RESERVED_GDT_PAGE, (xen.gdt_page << 12) | P | A | NX)
            ep = self._alloc()
            self.entry_pages.append(ep)
            self._set(v, ENTRY_PAGE, (ep << 12) | P | A)

    def _alloc(self) -> int:
        mfn = self.machine.heap.alloc_xenheap_pages(0)
        if mfn is None:
            raise MemoryError("no Xen heap page for the per-domain area")
        self.machine.ram.page(mfn)[:] = 0
        self.frames.append(mfn)
        return mfn

    def _set(self, vcpu_id: int, page: int, entry: int) -> None:
        idx = (vcpu_id << (GDT_LDT_VCPU_VA_SHIFT - 12)) + page
        self.machine.ram.u64[(self.l1s[idx >> 9] << 9) + (idx & 511)] = entry

    def set_gdt_frame(self, vcpu_id: int, page: int, mfn: int | None) -> None:
        """A guest GDT frame (set_gdt), or the zero page read-only when there is none."""
        if mfn is None:
            self._set(vcpu_id, page, (self.xen.zero_page << 12) | P | A | NX)
        else:
            self._set(vcpu_id, page, (mfn << 12) | P | RW | A | D | NX)

    def write_entry_frame(self, vcpu_id: int, rip: int, cs: int, rflags: int, rsp: int, ss: int):
        """The `iretq` and the frame it pops; returns (rip, rsp) to start the vCPU at (CPL 0)."""
        base = self.entry_pages[vcpu_id] << 12
        ram = self.machine.ram
        ram.write(base, b"\x48\xcf")  # iretq
        ram.write(base + ENTRY_FRAME_OFF, struct.pack("<5Q", rip, cs, rflags, rsp, ss))
        va = gdt_va(vcpu_id) + (ENTRY_PAGE << 12)
        return va, va + ENTRY_FRAME_OFF

    def free(self) -> None:
        heap = self.machine.heap
        for mfn in self.frames:
            heap.free_xenheap_pages(mfn, 0)
        self.frames.clear()
