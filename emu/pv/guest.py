"""copy_{from,to}_guest for a PV vCPU: through the page tables the vCPU runs on now.

Xen reads and writes PV guest memory with the guest's own tables loaded (its current mode's
L4), refusing Xen's range; a fault is -EFAULT for the hypercall (emu/pv/mm.py
`linear_to_maddr`).
"""

from __future__ import annotations

import struct

from emu.pv.mm import GuestFault, linear_to_maddr


def read(vcpu, va: int, n: int) -> bytes:
    ram = vcpu.machine.ram
    cr3 = vcpu.cr3_mfn() << 12
    out = bytearray()
    while n > 0:
        ma = linear_to_maddr(ram.u64, ram.nr_frames, cr3, va, False)
        chunk = min(n, 4096 - (va & 0xFFF))
        out += ram.mm[ma : ma + chunk]
        va, n = va + chunk, n - chunk
    return bytes(out)


def write(vcpu, va: int, data: bytes) -> None:
    ram = vcpu.machine.ram
    cr3 = vcpu.cr3_mfn() << 12
    # Translate every page first: a fault part-way must not leave a partial write.
    pieces = []
    off = 0
    while off < len(data):
        chunk = min(len(data) - off, 4096 - ((va + off) & 0xFFF))
        pieces.append((linear_to_maddr(ram.u64, ram.nr_frames, cr3, va + off, True), off, chunk))
        off += chunk
    for ma, o, chunk in pieces:
        ram.mm[ma : ma + chunk] = data[o : o + chunk]


def read_u32(vcpu, va: int) -> int:
    return struct.unpack("<I", read(vcpu, va, 4))[0]


def read_u64(vcpu, va: int) -> int:
    return struct.unpack("<Q", read(vcpu, va, 8))[0]


__all__ = ["GuestFault", "read", "write", "read_u32", "read_u64"]
