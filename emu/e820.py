"""The host's physical address map (what Xen prints as `Xen-e820 RAM map:`).

A PC-like map: low memory up to the EBDA, the legacy BIOS area, RAM from 1 MiB; above 3 GiB
of RAM the rest is relocated above 4 GiB, leaving the 32-bit hole for MMIO: the IO-APIC
(0xfec00000), the local APIC (0xfee00000) and the firmware ROM (0xfffc0000) are reserved
there, the pages dom0's I/O Memory rangeset leaves out (keyhandlers/domain.py). The
machine's frame table spans the whole map; frames in holes are never RAM (emu/machine.py
keeps them as Xen's).
"""

from __future__ import annotations

from emu.mm.page import PAGE_SHIFT

PCI_HOLE_START = 0xC0000000  # RAM above 3 GiB moves above 4 GiB
FOUR_GB = 1 << 32
IOAPIC = (0xFEC00000, 0xFEC00FFF)
LAPIC = (0xFEE00000, 0xFEE00FFF)
FIRMWARE = (0xFFFC0000, 0xFFFFFFFF)


def address_space(memory: int) -> int:
    """Bytes of machine address space holding `memory` bytes of RAM."""
    return memory + FOUR_GB - PCI_HOLE_START if memory > PCI_HOLE_START else memory


def hole_frames(memory: int) -> tuple[int, int] | None:
    """[first, end) frames of the 32-bit hole inside the map, if RAM reaches above it."""
    if memory <= PCI_HOLE_START:
        return None
    return PCI_HOLE_START >> PAGE_SHIFT, FOUR_GB >> PAGE_SHIFT


def e820_map(memory: int) -> list[tuple[int, int, str]]:
    """(first byte, last byte, type) in address order, as Xen prints the map."""
    out = [
        (0x0, 0x9FBFF, "usable"),
        (0x9FC00, 0x9FFFF, "reserved"),
        (0xF0000, 0xFFFFF, "reserved"),
        (0x100000, min(memory, PCI_HOLE_START) - 1, "usable"),
    ]
    out += [(s, e, "reserved") for s, e in (IOAPIC, LAPIC, FIRMWARE)]
    if memory > PCI_HOLE_START:
        out.append((FOUR_GB, address_space(memory) - 1, "usable"))
    return out


def usable_pages(memory: int) -> int:
    return sum((e + 1 - s) >> PAGE_SHIFT for s, e, kind in e820_map(memory) if kind == "usable")
