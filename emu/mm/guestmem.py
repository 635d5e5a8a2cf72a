"""The hypervisor's reads and writes of guest linear memory (hvm_copy_{from,to}_guest_linear).

Used to fetch the instruction behind a #GP, to read `lidt` operands and hypercall buffers,
and to push the frame of an exception reflected into the guest. The walk goes through the
guest's *own* tables (its CR3, its P2M), never the shadows, and sets no A/D bit: these are
hypervisor accesses, not guest ones. Every frame it can reach is one the domain's P2M maps,
so a guest can never point the hypervisor at another domain's memory.
"""

from __future__ import annotations

from emu.mm.page import (
    _PAGE_PRESENT,
    _PAGE_PSE,
    _PAGE_RW,
    INVALID_MFN,
    PAGE_OFFSET_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTE_ADDR_MASK,
)


class GuestMemError(Exception):
    """The guest's tables do not map this linear address (or not writably)."""

    def __init__(self, va: int, write: bool) -> None:
        super().__init__(f"{'write' if write else 'read'} of guest VA {va:#x} not mapped")
        self.va = va
        self.write = write


def canonical(va: int) -> bool:
    top = va >> 47
    return top == 0 or top == 0x1FFFF


def _mfn(dom, gfn: int, nr_frames: int) -> int | None:
    p2m = dom.p2m
    if gfn >= len(p2m):
        return None
    mfn = int(p2m[gfn])
    if mfn == INVALID_MFN or mfn >= nr_frames:
        return None
    return mfn


def translate(machine, dom, guest_cr3: int, va: int, write: bool = False) -> int:
    """Machine address of guest linear `va` through the guest's tables; GuestMemError if not."""
    va &= (1 << 64) - 1
    if not canonical(va):
        raise GuestMemError(va, write)
    u64 = machine.ram.u64
    nr = machine.ram.nr_frames
    gfn = (guest_cr3 & PTE_ADDR_MASK) >> PAGE_SHIFT
    for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
        mfn = _mfn(dom, gfn, nr)
        if mfn is None:
            raise GuestMemError(va, write)
        e = int(u64[(mfn << 9) + ((va >> shift) & 511)])
        if not e & _PAGE_PRESENT or (write and not e & _PAGE_RW):
            raise GuestMemError(va, write)
        if level in (3, 2) and e & _PAGE_PSE:
            base = (e & PTE_ADDR_MASK) >> PAGE_SHIFT & ~((1 << (shift - 12)) - 1)
            gfn = base + ((va >> 12) & ((1 << (shift - 12)) - 1))
            break
        gfn = (e & PTE_ADDR_MASK) >> PAGE_SHIFT
    mfn = _mfn(dom, gfn, nr)
    if mfn is None:
        raise GuestMemError(va, write)
    return (mfn << PAGE_SHIFT) | (va & PAGE_OFFSET_MASK)


def read(machine, dom, guest_cr3: int, va: int, n: int) -> bytes:
    """`n` bytes of guest linear memory (may cross pages)."""
    out = bytearray()
    while n > 0:
        ma = translate(machine, dom, guest_cr3, va)
        chunk = min(n, PAGE_SIZE - (va & PAGE_OFFSET_MASK))
        out += machine.ram.read(ma, chunk)
        va += chunk
        n -= chunk
    return bytes(out)


def read_partial(machine, dom, guest_cr3: int, va: int, n: int) -> bytes:
    """As many of `n` bytes as are mapped from `va` on (instruction fetch near a page end)."""
    out = bytearray()
    while n > 0:
        try:
            ma = translate(machine, dom, guest_cr3, va)
        except GuestMemError:
            break
        chunk = min(n, PAGE_SIZE - (va & PAGE_OFFSET_MASK))
        out += machine.ram.read(ma, chunk)
        va += chunk
        n -= chunk
    return bytes(out)


def write(machine, dom, guest_cr3: int, va: int, data: bytes, refuse=None) -> None:
    """Write guest linear memory; `refuse(mfn) -> bool` vetoes a frame (e.g. a shadowed PT)."""
    # Translate every page first so that a failure writes nothing.
    pieces = []
    off = 0
    while off < len(data):
        ma = translate(machine, dom, guest_cr3, va + off, write=True)
        if refuse is not None and refuse(ma >> PAGE_SHIFT):
            raise GuestMemError(va + off, True)
        chunk = min(len(data) - off, PAGE_SIZE - ((va + off) & PAGE_OFFSET_MASK))
        pieces.append((ma, data[off : off + chunk]))
        off += chunk
    for ma, piece in pieces:
        machine.ram.write(ma, piece)
