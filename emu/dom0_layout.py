"""Dom0's boot-time layout as Xen's PV dom0 builder prints it (xen/arch/x86/pv/dom0_build.c,
dom0_construct(): the "PHYSICAL/VIRTUAL MEMORY ARRANGEMENT" blocks).

Dom0 runs no code on this machine (docs/differences.md); the kernel these lines describe is
a 64-bit Linux as its ELF notes would present it: virt_base 0xffffffff80000000, loaded at
physical 16 MiB, an initial P2M at XEN_ELFNOTE_INIT_P2M (0x8000000000) and an unmapped
initrd (there is none). The arithmetic is Xen's, so the figures follow dom0's size.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.mm.page import PAGE_SHIFT, PAGE_SIZE

KERNEL_PSTART = 0x1000000
KERNEL_PEND = 0x2A2C000
VIRT_BASE = 0xFFFFFFFF80000000
VIRT_KSTART = VIRT_BASE + KERNEL_PSTART
VIRT_KEND = VIRT_BASE + KERNEL_PEND
VIRT_ENTRY = 0xFFFFFFFF82A1B1C0  # startup_xen
P2M_BASE = 0x8000000000  # Linux's XEN_ELFNOTE_INIT_P2M
SIZEOF_START_INFO = 1168  # struct start_info, x86-64 (xen/include/public/xen.h)
SIZEOF_VGA_CONSOLE_INFO = 40  # struct dom0_vga_console_info
L4_SHIFT, L3_SHIFT, L2_SHIFT = 39, 30, 21


def round_pgup(x: int) -> int:
    return (x + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def get_order_from_bytes(size: int) -> int:
    return max(0, ((size - 1) >> PAGE_SHIFT).bit_length())


def _nr(lo: int, hi: int, shift: int) -> int:
    """NR(_l,_h,_s) of dom0_build.c: page-table pages of size 2^shift covering [lo, hi)."""
    m = (1 << shift) - 1
    return (((hi + m) & ~m) - (lo & ~m)) >> shift


@dataclass(frozen=True)
class Dom0Layout:
    nr_pages: int
    vphysmap: tuple[int, int]
    vstartinfo: tuple[int, int]
    vpt: tuple[int, int]
    vstack: tuple[int, int]
    v_end: int
    order: int  # the first chunk alloc_domheap_pages() takes

    def virtual_lines(self) -> list[str]:
        """dom0_build.c:679-693 (no initrd, not a PV shim)."""

        def rng(a: int, b: int) -> str:
            return f"{a:016x}->{b:016x}"

        return [
            "VIRTUAL MEMORY ARRANGEMENT:",
            f" Loaded kernel: {rng(VIRT_KSTART, VIRT_KEND)}",
            f" Phys-Mach map: {rng(*self.vphysmap)}",
            f" Start info:    {rng(*self.vstartinfo)}",
            f" Page tables:   {rng(*self.vpt)}",
            f" Boot stack:    {rng(*self.vstack)}",
            f" TOTAL:         {rng(VIRT_BASE, self.v_end)}",
            f" ENTRY ADDRESS: {VIRT_ENTRY:016x}",
        ]


def dom0_layout(nr_pages: int) -> Dom0Layout:
    """The computation of dom0_build.c:530-607 for a 64-bit dom0 of `nr_pages` pages."""
    # unmapped initrd: the physmap starts right after the kernel; with a P2M base from the
    # ELF notes it takes no room there (vphysmap_end = vphysmap_start).
    vphysmap_start = round_pgup(VIRT_KEND)
    vstartinfo_start = round_pgup(vphysmap_start)
    vstartinfo_end = vstartinfo_start + SIZEOF_START_INFO
    vpt_start = round_pgup(vstartinfo_end)
    vstartinfo_end += SIZEOF_VGA_CONSOLE_INFO
    nr_pt_pages = 2
    while True:
        vpt_end = vpt_start + nr_pt_pages * PAGE_SIZE
        vstack_start = vpt_end
        vstack_end = vstack_start + PAGE_SIZE
        v_end = (vstack_end + (1 << 22) - 1) & ~((1 << 22) - 1)
        if v_end - vstack_end < (512 << 10):
            v_end += 1 << 22  # at least 512 KiB of padding
        need = (
            1
            + _nr(VIRT_BASE, v_end, L4_SHIFT)
            + _nr(VIRT_BASE, v_end, L3_SHIFT)
            + _nr(VIRT_BASE, v_end, L2_SHIFT)
        )
        if need <= nr_pt_pages:
            break
        nr_pt_pages += 1
    return Dom0Layout(
        nr_pages=nr_pages,
        vphysmap=(P2M_BASE, P2M_BASE + nr_pages * 8),
        vstartinfo=(vstartinfo_start, vstartinfo_end),
        vpt=(vpt_start, vpt_end),
        vstack=(vstack_start, vstack_end),
        v_end=v_end,
        order=get_order_from_bytes(v_end - VIRT_BASE),
    )
